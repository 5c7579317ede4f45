"""The command line: one line for the library's errors and OSError, a traceback for bugs."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from dali_relabel.cli import build_parser, main
from dali_relabel.store import LabelMapStore

VERBS = {
    "demo",
    "sample",
    "show",
    "bench",
    "convert",
    "generate",
    "ensemble",
    "info",
    "verify",
    "rewrite",
    "report",
}


def test_every_verb_is_there():
    text = build_parser().format_help()
    assert set(re.findall(r"^    (\w+) ", text, re.MULTILINE)) == VERBS


def test_library_errors_are_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.zarr")]) == 1  # StoreNotFoundError
    err = capsys.readouterr().err
    assert err.startswith("dali-relabel info: error: label map store ")
    assert "does not exist" in err and err.count("\n") == 1 and "Traceback" not in err


def test_os_errors_are_one_line(tmp_path, capsys, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(LabelMapStore, "open", denied)
    assert main(["info", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == f"dali-relabel info: error: [Errno 13] Permission denied: '{tmp_path}'\n"


@pytest.mark.parametrize("bug", [ValueError, KeyError, TypeError, ZeroDivisionError])
def test_anything_else_is_a_bug_and_keeps_its_traceback(tmp_path, monkeypatch, bug):
    def broken(*args, **kwargs):
        raise bug("a bug")

    monkeypatch.setattr(LabelMapStore, "open", broken)
    with pytest.raises(bug, match="a bug"):
        main(["info", str(tmp_path)])


def test_a_bug_in_a_command_prints_its_traceback(tmp_path):
    code = (
        "import sys; from dali_relabel.cli import main; from dali_relabel.store import "
        "LabelMapStore; LabelMapStore.open = lambda *a, **k: 1 / 0; sys.exit(main(sys.argv[1:]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, "info", str(tmp_path)], capture_output=True, text=True
    )
    assert run.returncode == 1 and "Traceback" in run.stderr
    assert run.stderr.strip().endswith("ZeroDivisionError: division by zero")


def test_no_verb_prints_help(capsys):
    assert main([]) == 2
    assert "usage: dali-relabel" in capsys.readouterr().out
