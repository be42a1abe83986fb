"""The study report's command line: ``python study/report.py results/<name> [results/<other> ...] [--out FILE]``.

A thin script around :func:`study.report.main`, the package ``study/report/`` (also ``python -m study report``
and the console script ``maae-study report``). As a file beside that package, this script is only ever run,
never imported: ``import study.report`` finds the package. It imports the installed ``study`` package
(``pip install -e .``, which ``scripts/setup.sh`` does), so it patches no ``sys.path``.
"""

from __future__ import annotations

import sys

from study.report import main

if __name__ == "__main__":
    sys.exit(main())
