"""The study platform's commands: ``run`` a study, or write the ``report`` of one or several studies.

``python -m study run|report ...``, or the console script ``maae-study run|report ...``:

- ``run``: run a study (:mod:`study.cli`, the same as ``python study/run.py``);
- ``report``: write the report of one or several studies (:mod:`study.report`, as ``python study/report.py``).

The command's own ``--help`` lists its flags. Each command's modules are imported only when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

COMMANDS = {
    "run": "run a study of MAAE's hyperparameters (python study/run.py)",
    "report": "write report.html and comparison.md of one or several studies (python study/report.py)",
}


def main(argv: Sequence[str] | None = None, prog: str = "maae-study") -> int:
    """Dispatch to the command's own command line; returns its exit code."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.splitlines()[0],
        epilog="commands: " + "; ".join(f"{name}: {text}" for name, text in COMMANDS.items()))
    parser.add_argument("command", choices=list(COMMANDS))
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="the command's own flags (see its --help)")
    args = parser.parse_args(argv)
    command_prog = f"{prog} {args.command}"
    if args.command == "run":
        from study.cli import main as run_main

        return run_main(args.arguments, prog=command_prog)
    from study.report import main as report_main

    return report_main(args.arguments, prog=command_prog)


if __name__ == "__main__":
    sys.exit(main(prog="python -m study"))
