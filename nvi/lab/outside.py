"""The lab's outside host: a web server that answers every GET with the address it came from.

It stands for the internet beyond the lab's routers; `nvi lab up` runs it in the outside host's
namespace (`python -m nvi.lab.outside ADDRESS PORT`). Tests read the page to see which source
address a tenant's outbound fetch arrived with, and fetch from the outside host (`fetch_in`) to
see what its floating addresses and published ports reach.
"""

from __future__ import annotations

import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_FETCH = (
    "import sys, urllib.request\n"
    "page = urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2]))\n"
    "print(page.read().decode(), end='')"
)


class EchoAddress(BaseHTTPRequestHandler):
    """`you are <client address>`, as plain text."""

    def do_GET(self) -> None:  # noqa: N802 (the http.server's name)
        body = f"you are {self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        sys.stderr.write(f"{self.client_address[0]} {format % args}\n")


def fetch_in(netns: str, url: str, timeout: float = 2) -> str | None:
    """The page at `url` as a client in namespace `netns` gets it (the outside host's, or a
    namespace node's), stripped; None when nothing answered within `timeout` seconds."""
    argv = ["ip", "netns", "exec", netns, sys.executable, "-c", _FETCH, url, str(timeout)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 20)
    return done.stdout.strip() if done.returncode == 0 else None


def main(argv: list[str]) -> None:
    address, port = argv[0], int(argv[1])
    ThreadingHTTPServer((address, port), EchoAddress).serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
