"""Command line of the study platform: ``python study/run.py --space search_spaces/ang.yaml [...]``.

A thin wrapper around :func:`study.cli.main` that works when run as a script from the repository root.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from study/ itself
    _SCRIPT_DIR = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _SCRIPT_DIR]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from study.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
