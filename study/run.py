"""Command line of the study platform: ``python study/run.py --space search_spaces/ang.yaml [...]``.

A thin script around :func:`study.cli.main` (also ``python -m study run`` and the console script
``maae-study run``). It imports the installed ``study`` package (``pip install -e .``, which
``scripts/setup.sh`` does), so it patches no ``sys.path``.
"""

from __future__ import annotations

import sys

from study.cli import main

if __name__ == "__main__":
    sys.exit(main())
