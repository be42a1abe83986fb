"""The whole report (``report.html`` + ``comparison.md``): offline, every section with real data or the reason
it has none, on complete and partial studies, one study or several, and its command line."""

from __future__ import annotations

import re
import subprocess
import sys

from study.report import main, write_report
from study.report.best import best_trial
from study.report.load import load_results
from tests.study.helpers import REPO_ROOT
from tests.study.report.fixtures import (
    EMBEDDED_CATEGORIES,
    TrialSpec,
    embedded_images,
    external_references,
    file_hashes,
    grid_spec,
    grid_study,
    report_sections,
    search_spec,
    search_study,
    write_study,
)


def test_full_report_is_offline_and_shows_every_section(tmp_path):
    folder = grid_study(tmp_path)
    before = file_hashes(folder)
    out = write_report(folder)
    assert out == folder / "report.html"
    text = out.read_text(encoding="utf-8")
    assert external_references(text) == []
    assert text.count("data-target=\"plot-") >= 8  # heatmaps, search plots, ablation, paper, ROC
    images = embedded_images(text)
    assert len(images) == 4 * 2 * 3  # 4 categories × 2 examples × image, mask, heatmap
    assert all(src.startswith("data:image/png;base64,") for src in images)
    plotly_scripts = [s for s in re.findall(r"<script>(.*?)</script>", text, flags=re.S) if "Plotly" in s and
                      len(s) > 1_000_000]
    assert len(plotly_scripts) == 1  # plotly.js is inlined once
    sections = report_sections(text)
    assert set(sections) == {"summary", "per-category", "search", "trials", "ablation", "paper", "pictures"}
    assert "Not available" not in sections["ablation"] and "Table 3" in sections["ablation"]
    assert "97.2" in sections["ablation"]  # the paper's full model
    assert "99.8" in sections["paper"]  # MAAE's metal_nut image AUROC beside ours
    after = file_hashes(folder)
    assert set(after) - set(before) == {"report.html", "comparison.md", "settings.csv", "comparisons.csv",
                                        "rung_correlations.csv"}  # no baseline.csv: the data set is elsewhere
    assert {k: after[k] for k in before} == before  # the study's own tables and best/ are only read
    assert file_hashes(folder) == file_hashes(write_report(folder).parent)  # the same report every time


def test_summary_shows_the_seed_interval_of_the_best_setting(tmp_path):
    folder = search_study(tmp_path)
    results = load_results(folder)
    interval = best_trial(results).interval("image_auroc")
    assert interval.n_seeds == 3 and interval.low < interval.mean < interval.high
    text = write_report(folder).read_text(encoding="utf-8")
    summary = report_sections(text)["summary"]
    assert f"{100 * interval.mean:.2f} [{100 * interval.low:.2f}, {100 * interval.high:.2f}]" in summary
    assert "this setting has 3 completed seed(s) (0, 1, 2)" in summary.lower()


def test_search_report_notes_missing_ablation_and_paper_overlay(tmp_path):
    spec = search_spec(trials=[t for t in search_spec().trials])
    for trial in spec.trials:  # a pure search: attention fixed, so no switch varies
        trial.params["attention"] = "mixed"
    sections = report_sections(write_report(write_study(tmp_path, spec)).read_text(encoding="utf-8"))
    assert "Not available because this is a search study" in sections["ablation"]
    assert "are not MVTec-AD" in sections["paper"] and ", ".join(EMBEDDED_CATEGORIES) in sections["paper"]
    assert "97.2" in sections["paper"]  # the paper's averages, for context


def test_report_of_a_running_study_without_best(tmp_path):
    trials = [TrialSpec("t_run", "running", {"noise_intensity": 1.0, "seed": 0}),
              TrialSpec("t_wait", "pending", {"noise_intensity": 0.5, "seed": 0}, has_metrics=False)]
    spec = search_spec(trials=trials, best_trial_id=None, with_best=False, status="running")
    folder = write_study(tmp_path, spec)
    sections = report_sections(write_report(folder).read_text(encoding="utf-8"))
    assert "no trial has finished yet (1 running, 1 pending, 0 failed)" in sections["summary"]
    for name in ("per-category", "search", "pictures", "paper"):
        assert "Not available because" in sections[name], name
    assert "t_run" in sections["trials"]
    assert "t_run (running)" in sections["search"]  # its learning curve is already drawn
    assert (folder / "comparison.md").is_file()


def test_report_when_every_trial_failed(tmp_path):
    trials = [TrialSpec(f"f{i}", "failed", {"noise_intensity": 0.5 + i, "seed": 0}, error=f"RuntimeError: {i}")
              for i in range(2)]
    folder = write_study(tmp_path, search_spec(trials=trials, best_trial_id=None, with_best=False))
    sections = report_sections(write_report(folder).read_text(encoding="utf-8"))
    assert "all 2 trial(s) failed" in sections["summary"]
    assert "RuntimeError: 1" in sections["summary"]


def test_report_of_a_single_trial(tmp_path):
    one = [TrialSpec("only", "completed", {"use_ang": True, "use_ffm": True, "attention": "mixed", "seed": 0})]
    folder = write_study(tmp_path, grid_spec(trials=one))
    sections = report_sections(write_report(folder).read_text(encoding="utf-8"))
    assert "(1 seed, no interval)" in sections["summary"] and "so no interval" in sections["summary"]
    assert "the 1 completed trial(s)" in sections["search"]
    assert "no two completed settings differ in exactly one parameter" in sections["ablation"]


def test_report_before_the_first_trial(tmp_path):
    folder = write_study(tmp_path, search_spec(trials=[], best_trial_id=None, with_best=False, status="running"))
    (folder / "trials.csv").unlink()
    (folder / "per_category.csv").unlink()
    (folder / "history.csv").unlink()
    sections = report_sections(write_report(folder).read_text(encoding="utf-8"))
    assert "trials.csv lists no trial yet" in sections["trials"]


def test_comparison_of_several_studies(tmp_path):
    grid, search = grid_study(tmp_path), search_study(tmp_path)
    out = write_report(grid, [search])
    assert out == grid / "comparison.html"
    text = out.read_text(encoding="utf-8")
    assert external_references(text) == []
    sections = report_sections(text)
    assert set(sections) == {"overview", "summary-0", "summary-1"}
    assert "ablation" in sections["overview"] and "ang" in sections["overview"]
    markdown = (grid / "comparison-studies.md").read_text(encoding="utf-8")
    assert "| category | ablation | ang |" in markdown
    assert "## Study ablation" in markdown and "## Study ang" in markdown
    assert not (grid / "comparison.md").exists()  # the single-study Markdown is not overwritten


def test_command_line(tmp_path):
    folder = search_study(tmp_path)
    out = tmp_path / "custom.html"
    done = subprocess.run([sys.executable, "study/report.py", str(folder), "--out", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out) and out.is_file() and (tmp_path / "custom.md").is_file()
    assert main([str(tmp_path / "missing")]) == 2
