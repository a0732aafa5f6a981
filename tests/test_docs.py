"""The documentation site builds in strict mode (a broken link, a missing anchor or a page left
out of the navigation fails), and its command reference is the command line's own, generated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_command_reference_is_up_to_date():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import gen_reference
    finally:
        sys.path.pop(0)
    stale = [
        name
        for name, text in gen_reference.pages().items()
        if not (gen_reference.FOLDER / name).is_file()
        or (gen_reference.FOLDER / name).read_text() != text
    ]
    assert not stale, f"out of date: {stale}; run python docs/gen_reference.py"


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="the test extra installs mkdocs")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        # no -q: it hides the warnings that --strict counts, so a broken link would pass
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "reference" / "cli" / "find" / "index.html").is_file()
    assert "run_find" in (tmp_path / "reference" / "api" / "index.html").read_text()
