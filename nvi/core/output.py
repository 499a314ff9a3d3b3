"""Rendering for the CLI: rich tables for people, JSON or YAML for scripts."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

# Piped output (CI logs, `| less`) gets room for the wide tables instead of rich's default 80.
console = Console(width=None if sys.stdout.isatty() else 132)


def print_json(data: Any) -> None:
    """Machine-readable output: stable keys, one document on stdout."""
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def print_yaml(data: Any) -> None:
    """The same document as `print_json`, as YAML (what the JSON round-trip gives: plain
    strings, numbers, lists and maps)."""
    plain = json.loads(json.dumps(data, default=str))
    print(yaml.safe_dump(plain, sort_keys=True, default_flow_style=False), end="")


def print_document(output: str, data: Any) -> None:
    """One document for scripts, in the `-o` format asked for (json or yaml)."""
    print_yaml(data) if output == "yaml" else print_json(data)


def print_table(title: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(row.get(column)) for column in columns))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "[green]yes[/]" if value else "[red]no[/]"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


class ProgressLine:
    """What a long operation is doing, on stderr so stdout stays a clean answer: a spinner
    with the elapsed time on a terminal; in a log, each new message once with its time, from
    the first second on (a quick answer, or a quick error, stays alone on its line)."""

    quiet_seconds = 1.0

    def __init__(self, label: str) -> None:
        self.label = label
        self.console = Console(stderr=True, width=None if sys.stderr.isatty() else 132)
        self.started = time.monotonic()
        self._last = ""
        self._status = self.console.status(label) if self.console.is_terminal else None

    def __enter__(self) -> ProgressLine:
        if self._status is not None:
            self._status.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._status is not None:
            self._status.stop()

    def update(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        if self._status is not None:
            self._status.update(f"{self.label}: {text} [dim]({elapsed:.0f} s)[/]")
        elif text != self._last and elapsed >= self.quiet_seconds:
            self.console.print(f"{self.label}: {text} ({elapsed:.1f} s)", markup=False)
            self._last = text
