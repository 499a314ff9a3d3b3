"""How long operations report progress when stderr is a log rather than a terminal."""

from __future__ import annotations

import pytest

from nvi.core.output import ProgressLine


def test_a_quick_operation_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with ProgressLine("red/web") as progress:
        progress.update("starting its container")
    assert capsys.readouterr() == ("", "")


def test_a_slow_one_prints_each_new_step_once_on_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ProgressLine, "quiet_seconds", 0.0)
    with ProgressLine("red/vm1") as progress:
        for step in ["booting", "booting", "booting: Freeing unused kernel memory", "booted"]:
            progress.update(step)
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert [line.rsplit(" (", 1)[0] for line in lines] == [
        "red/vm1: booting",
        "red/vm1: booting: Freeing unused kernel memory",
        "red/vm1: booted",
    ]
    assert all(line.endswith(" s)") for line in lines)
