"""Shared test set-up: tests marked `root` need root for namespaces and Open vSwitch."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_LAB = REPO / "examples" / "labs" / "two-clouds.toml"


def example_lab_text(name: str) -> str:
    """The example lab file under another name, without its portal: test labs run side by
    side, and the portal's port is one per machine (the demo's test keeps it)."""
    text = EXAMPLE_LAB.read_text()
    assert 'name = "demo"' in text and "\n[portal]\n" in text
    text = text.replace('name = "demo"', f'name = "{name}"')
    return re.sub(r"(?ms)^\[portal\]\n.*?(?=^\[|\Z)", "", text)


def readdressed(text: str, east: str, west: str) -> str:
    """A lab file's text with its two clouds on other /24s (`east`, `west`: "a.b.c"), so a
    test lab reached from this machine (the access link) does not collide with the example
    lab a user left running (`./scripts/demo`)."""
    return text.replace("198.51.100.", f"{east}.").replace("203.0.113.", f"{west}.")


# Test modules import helpers from this fixture plugin directly; whichever module pytest
# imports first, its asserts must still be rewritten (and pytest must not warn).
pytest.register_assert_rewrite("tests.integration.hostagent_fixtures")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, Open vSwitch); run as root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
