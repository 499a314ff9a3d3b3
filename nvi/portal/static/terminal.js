// The node's console: a small terminal with no dependencies. Output is drawn into a <pre>
// (carriage return, newline, backspace, erase-line and cursor moves along the line; other
// escape sequences are skipped); keys typed into the textarea go to the node as bytes.
// Protocol (the agent's): binary messages are terminal bytes, a text message a window size.
"use strict";
(function () {
  const screen = document.getElementById("screen");
  const keys = document.getElementById("keys");
  const status = document.getElementById("status");
  const MAX_LINES = 2000;
  const SPECIAL = {
    Enter: "\r", Backspace: "\x7f", Tab: "\t", Escape: "\x1b", Delete: "\x1b[3~",
    ArrowUp: "\x1b[A", ArrowDown: "\x1b[B", ArrowRight: "\x1b[C", ArrowLeft: "\x1b[D",
    Home: "\x1b[H", End: "\x1b[F",
  };
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  let lines = [""];
  let row = 0;
  let col = 0;
  let pending = "";  // an escape sequence cut by a message boundary

  const url = new URL(screen.dataset.socket, window.location.href);
  url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";

  function send(text) {
    if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(text));
  }

  function put(ch) {
    const line = lines[row];
    lines[row] = line.slice(0, col).padEnd(col, " ") + ch + line.slice(col + 1);
    col += 1;
  }

  function newline() {
    row += 1;
    if (row === lines.length) lines.push("");
    if (lines.length > MAX_LINES) { lines.shift(); row -= 1; }
  }

  function csi(params, final) {
    const n = parseInt(params, 10) || 1;
    if (final === "K") lines[row] = lines[row].slice(0, col);
    else if (final === "J" && params === "2") { lines = [""]; row = 0; col = 0; }
    else if (final === "C") col += n;
    else if (final === "D") col = Math.max(0, col - n);
    else if (final === "G") col = n - 1;
    else if (final === "n" && params === "6") send("\x1b[" + (row + 1) + ";" + (col + 1) + "R");
  }

  function write(text) {
    text = pending + text;
    pending = "";
    for (let i = 0; i < text.length; i++) {
      const ch = text[i];
      if (ch === "\x1b") {
        const rest = text.slice(i);
        const match = /^\x1b\[([0-9;?]*)([@-~])/.exec(rest);
        if (match) { csi(match[1], match[2]); i += match[0].length - 1; }
        else if (rest.length < 16 && /^\x1b(\[[0-9;?]*)?$/.test(rest)) { pending = rest; break; }
        else if (/^\x1b\][^\x07]*\x07/.test(rest)) { i += /^\x1b\][^\x07]*\x07/.exec(rest)[0].length - 1; }
        else i += 1;  // a two-character escape: skipped
      } else if (ch === "\r") col = 0;
      else if (ch === "\n") newline();
      else if (ch === "\b") col = Math.max(0, col - 1);
      else if (ch === "\t") col = (Math.floor(col / 8) + 1) * 8;
      else if (ch >= " ") put(ch);
    }
    screen.textContent = lines.join("\n");
    screen.scrollTop = screen.scrollHeight;
  }

  ws.addEventListener("open", function () {
    status.textContent = "connected";
    ws.send(JSON.stringify({ rows: 30, cols: 100 }));
    keys.focus();
  });
  ws.addEventListener("message", function (event) {
    write(decoder.decode(event.data, { stream: true }));
  });
  ws.addEventListener("close", function (event) {
    status.textContent = "closed" + (event.reason ? ": " + event.reason : "");
    keys.disabled = true;
  });
  ws.addEventListener("error", function () { status.textContent = "connection failed"; });

  keys.addEventListener("keydown", function (event) {
    let data = null;
    if (event.ctrlKey && event.key.length === 1) {
      const code = event.key.toUpperCase().charCodeAt(0);
      if (code >= 64 && code < 96) data = String.fromCharCode(code - 64);
    } else if (SPECIAL[event.key] !== undefined) data = SPECIAL[event.key];
    else if (event.key.length === 1 && !event.altKey && !event.metaKey) data = event.key;
    if (data !== null) { event.preventDefault(); send(data); }
  });
  keys.addEventListener("paste", function (event) {
    event.preventDefault();
    send(event.clipboardData.getData("text").replace(/\r?\n/g, "\r"));
  });
  screen.addEventListener("click", function () { keys.focus(); });
})();
