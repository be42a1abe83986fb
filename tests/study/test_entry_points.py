"""Every way to start the study platform works without patching ``sys.path``: the scripts ``study/run.py``
and ``study/report.py`` (run from the repository root or anywhere else), ``python -m study run|report``, and
the console scripts ``maae-study`` and ``maae`` that ``pip install -e .`` puts beside the interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.study.helpers import REPO_ROOT

BIN = Path(sys.executable).parent
HELP_TIMEOUT_S = 120


def help_text(command: list[str], cwd: Path) -> str:
    done = subprocess.run([*command, "--help"], cwd=cwd, capture_output=True, text=True, timeout=HELP_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize(("command", "flag"), [
    ([sys.executable, "study/run.py"], "--space"),
    ([sys.executable, "study/report.py"], "--out"),
    ([sys.executable, "-m", "study", "run"], "--space"),
    ([sys.executable, "-m", "study", "report"], "--out"),
])
def test_scripts_and_modules_from_the_repository_root(command: list[str], flag: str) -> None:
    assert flag in help_text(command, REPO_ROOT)


def test_the_run_script_from_another_folder(tmp_path: Path) -> None:
    assert "--space" in help_text([sys.executable, str(REPO_ROOT / "study" / "run.py")], tmp_path)


@pytest.mark.parametrize(("script", "expected"), [("maae-study", "report"), ("maae", "predict")])
def test_console_scripts(script: str, expected: str, tmp_path: Path) -> None:
    path = BIN / script
    if not path.is_file():
        pytest.skip(f"{path} is missing: the package is not installed (bash scripts/setup.sh installs it)")
    assert expected in help_text([str(path)], tmp_path)


def test_an_unknown_command_is_refused(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "study", "train"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=HELP_TIMEOUT_S)
    assert done.returncode == 2 and "invalid choice: 'train'" in done.stderr
