"""scripts/: the quickstart's handling of its output folder (the run itself is the README's first command)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import REPO


def _quickstart(out: Path, python: str) -> subprocess.CompletedProcess:
    # PYTHON=false makes the run stop at its first python call, right after the folder is prepared.
    return subprocess.run(["bash", str(REPO / "scripts" / "quickstart.sh"), str(out)], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": python, "AMP": "off"}, timeout=60)


def test_quickstart_refuses_a_folder_it_did_not_make(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    done = _quickstart(out, "false")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {out}: exists and was not made by the quickstart (no .skd-quickstart); give a new or empty folder"]
    assert [p.name for p in out.iterdir()] == ["thesis.tex"] and (out / "thesis.tex").read_text() == "years of work"


def test_quickstart_clears_only_its_own_folder(tmp_path):
    out = tmp_path / "qs"
    out.mkdir()
    (out / ".skd-quickstart").touch()
    (out / "gen0.log").write_text("an earlier quickstart's log")
    done = _quickstart(out, "false")
    assert done.returncode != 0  # stopped at the first python call, after preparing the folder
    assert (out / ".skd-quickstart").is_file()
    assert all(p.read_text() == "" for p in out.iterdir())  # the old log is gone (gen0.log is the new, empty one)
    empty = tmp_path / "empty"
    empty.mkdir()
    _quickstart(empty, "false")  # an empty folder is accepted, and marked as the quickstart's
    assert (empty / ".skd-quickstart").is_file()
