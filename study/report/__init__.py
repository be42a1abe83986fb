"""The interactive comparison report of one or several studies: ``report.html`` plus ``comparison.md``.

Usage (from the repository root)::

    python study/report.py results/<name> [results/<other> ...] [--out FILE]
    python -m study report ...    (or the console script: maae-study report ...)

One study writes ``results/<name>/report.html`` and ``comparison.md`` beside it. Several studies write one
comparison across them, by default ``comparison.html`` and ``comparison-studies.md`` in the first study's
folder. The HTML is self-contained (plotly.js inlined, pictures as data URIs) and opens offline. The study
runner calls :func:`write_report` at the end of every study and while it runs, so everything here works on
partial results. The study's own tables are only read; a single study's report writes the derived tables
beside them (settings.csv, comparisons.csv, rung_correlations.csv) and, once the study is no longer
running, baseline.csv when it is missing (``--no-baseline``: never compute it).

The package, one module per job: :mod:`~study.report.load` reads a results folder;
:mod:`~study.report.stats` holds the statistics on plain arrays (intervals, the paired test, Holm, the
probability of improvement, rank correlation); :mod:`~study.report.settings` groups completed trials into
settings with their seeds; :mod:`~study.report.best` finds the best trial; :mod:`~study.report.comparisons`
tests one-switch pairs; :mod:`~study.report.fidelity` keeps comparisons at one fidelity and correlates early
epochs with the final one; :mod:`~study.report.sensitivity` flags parameters within the seed spread;
:mod:`~study.report.baseline` computes and reads the patch baseline; :mod:`~study.report.ablation` lines
settings up with Table 3; :mod:`~study.report.derived` computes all of these once and writes the CSVs;
:mod:`~study.report.search` rebuilds the Optuna study; :mod:`~study.report.paper` holds the paper's
published values (package data in ``reference/``); :mod:`~study.report.tables` and
:mod:`~study.report.figures` turn numbers into display frames and plotly figures;
:mod:`~study.report.sections` assembles them into HTML sections on a :mod:`~study.report.html` page, and
:mod:`~study.report.markdown` writes the same tables as Markdown. This module puts a report together.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from maae.errors import EXIT_USAGE, MAAEError
from maae.io import write_text_atomic
from study.protocol import REPORT_FILE, REPORT_MARKDOWN_FILE
from study.report.derived import StudyNumbers, derive, write_tables
from study.report.html import Page, note
from study.report.load import load_results
from study.report.markdown import comparison_markdown, study_markdown
from study.report.sections import (
    ablation_section,
    overview_section,
    paper_section,
    per_category_section,
    pictures_section,
    search_section,
    summary_section,
    trials_section,
)

SEVERAL_REPORT_NAME = "comparison.html"
SEVERAL_MARKDOWN_NAME = "comparison-studies.md"
SINGLE_NAVIGATION = (("summary", "Summary"), ("per-category", "Per category"), ("search", "Search"),
                     ("trials", "Settings and trials"), ("ablation", "Ablation"), ("paper", "Against the paper"),
                     ("pictures", "Pictures"))


def default_output(results_dir: Path, several: bool) -> Path:
    """``<first study>/report.html`` for one study, ``<first study>/comparison.html`` for several."""
    return Path(results_dir) / (SEVERAL_REPORT_NAME if several else REPORT_FILE)


def markdown_output(out: Path, several: bool) -> Path:
    """The Markdown beside the HTML: ``comparison.md`` next to a ``report.html`` (the results format's name),
    ``comparison-studies.md`` next to a default ``comparison.html``, else the HTML's name with ``.md``."""
    if not several and out.name == REPORT_FILE:
        return out.with_name(REPORT_MARKDOWN_FILE)
    if several and out.name == SEVERAL_REPORT_NAME:
        return out.with_name(SEVERAL_MARKDOWN_NAME)
    return out.with_suffix(".md")


def single_study_html(numbers: StudyNumbers) -> str:
    results, best = numbers.results, numbers.best
    page = Page(f"Study {results.name}: MAAE report")
    body = "\n".join([
        summary_section(numbers),
        per_category_section(page, numbers),
        search_section(page, numbers),
        trials_section(numbers),
        ablation_section(page, numbers),
        paper_section(page, results, best),
        pictures_section(page, results, best),
    ])
    return page.render(body, SINGLE_NAVIGATION)


def several_studies_html(several: Sequence[StudyNumbers]) -> str:
    names = [numbers.results.name for numbers in several]
    page = Page(f"Comparison of studies: {', '.join(names)}")
    parts = [overview_section(page, several)]
    navigation = [("overview", "Studies compared")]
    for index, numbers in enumerate(several):
        anchor = f"summary-{index}"
        parts.append(summary_section(numbers, anchor=anchor))
        navigation.append((anchor, numbers.results.name))
    parts.append(note(f"Each study's own full report: python study/report.py <its folder> writes "
                      f"{REPORT_FILE} there (the study runner does so at the end of every study)."))
    body = "\n".join(parts)
    return page.render(body, navigation)


def write_report(results_dir: Path, others: Sequence[Path] = (), out: Path | None = None,
                 compute_baseline: bool = True) -> Path:
    """Write the HTML report (and its Markdown beside it) and return the HTML's path.

    ``results_dir`` alone: that study's report (default ``results_dir/report.html``), plus its derived tables
    (settings.csv, comparisons.csv, rung_correlations.csv) and, when it is missing and the study no longer
    runs, baseline.csv (unless ``compute_baseline`` is off). With ``others``: one comparison across all of
    them (default ``results_dir/comparison.html``), which reads but never computes a baseline. Raises
    :class:`DataError` when a folder is not a study folder.
    """
    folders = [Path(results_dir), *[Path(o) for o in others]]
    several = len(folders) > 1
    studies = [derive(load_results(f), compute_baseline=compute_baseline and not several) for f in folders]
    out = Path(out) if out is not None else default_output(folders[0], several)
    if several:
        html_text, markdown = several_studies_html(studies), comparison_markdown(studies)
    else:
        write_tables(studies[0])
        html_text, markdown = single_study_html(studies[0]), study_markdown(studies[0])
    write_text_atomic(out, html_text)
    write_text_atomic(markdown_output(out, several), markdown)
    return out


def main(argv: Sequence[str] | None = None, prog: str = "study/report.py") -> int:
    """The report's command line; returns the exit code (2 with one line on stderr for a bad folder)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="study results folder(s), e.g. results/ang")
    parser.add_argument("--out", type=Path, default=None, help="HTML file to write (default: see above)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="never compute a missing baseline.csv (it needs the study's data set and a few "
                             "minutes the first time on a data set)")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.results[0], args.results[1:], args.out, compute_baseline=not args.no_baseline)
    except MAAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(path)
    return 0



__all__ = ["default_output", "main", "markdown_output", "write_report"]
