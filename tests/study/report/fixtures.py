"""Synthetic study results folders (docs/results-format.md) for the report's tests, and what they check with.

Every number is a deterministic function of the trial's settings, seed and category (see
:func:`synthetic_metrics`), so tests can recompute what the report should show. The builders write the same
files as study/run.py: study.json, trials.csv, per_category.csv, history.csv and a best/ run folder with
scores.csv and examples/ (tiny PNGs written with PIL).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy import stats

from study.protocol import METRIC_NAMES as METRICS

# MVTec-AD categories spelled as a user might ("Metal Nut") to exercise name normalisation.
MVTEC_SUBSET = ("carpet", "bottle", "cable", "Metal Nut")
EMBEDDED_CATEGORIES = ("brick", "grass", "gravel")
# The six switch settings of the paper's Table 3: (use_ang, use_ffm, attention).
PAPER_SWITCH_ROWS = (
    (False, False, "spatial"),
    (False, False, "mixed"),
    (True, False, "spatial"),
    (True, True, "spatial"),
    (True, False, "mixed"),
    (True, True, "mixed"),
)
SEED_NOISE_STD = 0.004
EPOCHS = 3
IMAGE_SIDE = 12
SCORES_PER_CLASS = 4
EXAMPLES_PER_CATEGORY = 2
VERSIONS = {"python": "3.11", "torch": "2.14.1", "ray": "2.60.0", "optuna": "5.0.0", "timm": "1.0.31",
            "maae": "0.1.0"}


def synthetic_metrics(params: dict[str, Any], seed: int, category: str, category_index: int) -> dict[str, float]:
    """Per-category metrics (fractions) of one trial: module effects + category offset + seed noise."""
    base = 0.78
    base += 0.10 * bool(params.get("use_ang", True)) + 0.03 * bool(params.get("use_ffm", True))
    base += 0.02 * (params.get("attention", "mixed") == "mixed")
    base -= 0.05 * abs(float(params.get("noise_intensity", 1.0)) - 1.0)
    base += 0.02 * float(params.get("lambda_ang", 0.6))
    setting = repr(sorted((k, v) for k, v in params.items() if k != "seed")).encode()
    noise = np.random.default_rng([seed, category_index, zlib.crc32(setting)]).normal(0.0, SEED_NOISE_STD)
    image = float(np.clip(base + 0.01 * category_index - 0.015 + noise, 0.5, 0.999))
    pixel = float(np.clip(0.9 * image + 0.085, 0.5, 0.999))
    return {"image_auroc": image, "pixel_auroc": pixel, "aupro": pixel - 0.08, "image_ap": image - 0.01,
            "pixel_ap": pixel - 0.4, "pixel_f1_max": pixel - 0.35}


@dataclass
class TrialSpec:
    """One row of trials.csv before its metrics are computed."""

    trial_id: str
    status: str
    params: dict[str, Any]
    error: str = ""
    # Running trials report intermediate metrics; set False to leave them empty (just started).
    has_metrics: bool = True


@dataclass
class StudySpec:
    """Everything a synthetic study folder holds."""

    name: str
    kind: str
    categories: Sequence[str]
    trials: list[TrialSpec]
    space: dict[str, Any]
    searched: list[str]
    fixed: dict[str, Any] = field(default_factory=dict)
    metric: str = "image_auroc"
    mode: str = "max"
    with_best: bool = True
    status: str = "finished"
    best_trial_id: str | None = "auto"  # "auto": the best completed trial; None: study.json names none
    # 0: one seed per trial (the trial's ``seed``; per_category.csv has no seed column, as before repeats);
    # k >= 1: k seeds inside each trial (seed, seed + 1, ...), per_category.csv one row per seed and category,
    # trials.csv the means plus n_seeds and seeds.
    repeats: int = 0


def trial_seeds(spec: StudySpec, trial: TrialSpec) -> list[int]:
    first = int(trial.params.get("seed", 0))
    return [first + k for k in range(max(1, spec.repeats))]


def trial_metrics(spec: StudySpec, trial: TrialSpec) -> pd.DataFrame:
    """per_category.csv rows of one trial (original category spellings; with repeats, one per seed)."""
    rows = []
    for seed in trial_seeds(spec, trial):
        for index, category in enumerate(spec.categories):
            values = synthetic_metrics(trial.params, seed, category, index)
            rows.append({"trial_id": trial.trial_id, "seed": seed, "category": category, **values})
    columns = ["trial_id", "seed", "category", *METRICS] if spec.repeats else ["trial_id", "category", *METRICS]
    return pd.DataFrame(rows).reindex(columns=columns)


def _reports(trial: TrialSpec) -> bool:
    return trial.status in ("completed", "stopped") or (trial.status == "running" and trial.has_metrics)


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def _write_best(folder: Path, spec: StudySpec, best: TrialSpec, per_category: pd.DataFrame) -> None:
    best_dir = folder / "best"
    best_dir.mkdir(parents=True)
    (best_dir / "config.json").write_text(json.dumps({**best.params}, indent=2))
    own = per_category[per_category["trial_id"] == best.trial_id].drop(columns="trial_id")
    if "seed" in own.columns:  # best/ is the first seed's run folder
        own = own[own["seed"] == own["seed"].min()].drop(columns="seed")
    own.to_csv(best_dir / "per_category.csv", index=False)
    (best_dir / "metrics.json").write_text(json.dumps(own[list(METRICS)].mean().to_dict()))
    rng = np.random.default_rng(0)
    scores, examples = [], []
    for index, category in enumerate(spec.categories):
        for label in (0, 1):
            for k in range(SCORES_PER_CLASS):
                # Mostly separated scores with one overlap, so AUROC < 1 and the ROC curve has steps.
                score = float(rng.uniform(0.1, 0.5) + 0.35 * label + 0.02 * index)
                defect = "good" if label == 0 else "scratch"
                scores.append({"path": f"/data/{category}/test/{defect}/{k:03d}.png", "category": category,
                               "defect": defect, "label": label, "score": score})
        for k in range(EXAMPLES_PER_CATEGORY):
            label = k % 2
            stem = f"{category}/{k:02d}"
            image = np.full((IMAGE_SIDE, IMAGE_SIDE, 3), (40 + 30 * index) % 200, dtype=np.uint8)
            mask = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
            if label:
                mask[3:7, 3:7] = 255
            heat = image.copy()
            heat[..., 0] = np.maximum(heat[..., 0], mask)
            _png(best_dir / "examples" / f"{stem}_image.png", image)
            _png(best_dir / "examples" / f"{stem}_mask.png", mask)
            _png(best_dir / "examples" / f"{stem}_heatmap.png", heat)
            examples.append({"category": category, "path": f"/data/{category}/test/{k:03d}.png",
                             "defect": "good" if label == 0 else "scratch", "label": label,
                             "score": 0.3 + 0.4 * label, "image": f"{stem}_image.png",
                             "mask": f"{stem}_mask.png", "heatmap": f"{stem}_heatmap.png"})
    pd.DataFrame(scores).to_csv(best_dir / "scores.csv", index=False)
    pd.DataFrame(examples).to_csv(best_dir / "examples" / "examples.csv", index=False)


def write_study(root: Path, spec: StudySpec) -> Path:
    """Write ``root/<name>/`` for ``spec`` and return that folder."""
    folder = Path(root) / spec.name
    folder.mkdir(parents=True)
    for trial in spec.trials:  # fixed hyperparameters are columns of trials.csv too
        trial.params = {**spec.fixed, **trial.params}
    param_names = list(dict.fromkeys(k for t in spec.trials for k in t.params))
    per_category_frames, trial_rows, history_rows = [], [], []
    for trial in spec.trials:
        row: dict[str, Any] = {"trial_id": trial.trial_id, "status": trial.status, **trial.params}
        if _reports(trial):
            frame = trial_metrics(spec, trial)
            means = frame[list(METRICS)].mean()
            row.update(means.to_dict())
            epochs = EPOCHS if trial.status == "completed" else EPOCHS - 1
            row.update({"loss": 0.1, "epochs_done": epochs, "seconds": 12.5})
            if spec.repeats:
                seeds = trial_seeds(spec, trial)
                row.update({"n_seeds": len(seeds), "seeds": ";".join(str(s) for s in seeds)})
            if trial.status != "running":
                per_category_frames.append(frame)
            for epoch in range(1, epochs + 1):
                history_rows.append({"trial_id": trial.trial_id, "epoch": epoch, "loss": 0.3 / epoch,
                                     **{m: means[m] - 0.02 * (EPOCHS - epoch) for m in METRICS}})
        row["error"] = trial.error
        trial_rows.append(row)
    columns = ["trial_id", "status", *param_names, *METRICS, "loss", "epochs_done", "seconds",
               *(["n_seeds", "seeds"] if spec.repeats else []), "error"]
    trials = pd.DataFrame(trial_rows).reindex(columns=columns)
    trials.to_csv(folder / "trials.csv", index=False)
    per_category = (pd.concat(per_category_frames, ignore_index=True) if per_category_frames
                    else pd.DataFrame(columns=["trial_id", *(["seed"] if spec.repeats else []), "category",
                                               *METRICS]))
    per_category.to_csv(folder / "per_category.csv", index=False)
    pd.DataFrame(history_rows, columns=["trial_id", "epoch", "loss", *METRICS]).to_csv(
        folder / "history.csv", index=False)
    completed = trials[trials["status"] == "completed"].dropna(subset=[spec.metric])
    best_id = spec.best_trial_id
    if best_id == "auto":
        values = completed[spec.metric]
        best_id = None if completed.empty else str(
            completed.loc[values.idxmax() if spec.mode == "max" else values.idxmin(), "trial_id"])
    if spec.with_best and best_id is not None:
        _write_best(folder, spec, next(t for t in spec.trials if t.trial_id == best_id), per_category)
    study = {
        "name": spec.name, "description": f"synthetic {spec.kind} study for tests",
        "space_file": f"search_spaces/{spec.name}.yaml", "space": spec.space,
        "command": f"python study/run.py --space search_spaces/{spec.name}.yaml --preset quick",
        "data_root": "/data/synthetic", "categories": list(spec.categories), "preset": "quick",
        "metric": spec.metric, "mode": spec.mode, "kind": spec.kind, "searched": spec.searched,
        "fixed": spec.fixed, "versions": VERSIONS, "git_commit": "0123456789abcdef",
        "started_at": "2025-01-01T00:00:00Z",
        "ended_at": None if spec.status == "running" else "2025-01-01T01:00:00Z",
        "status": spec.status, "num_samples": len(spec.trials), "best_trial_id": best_id,
    }
    (folder / "study.json").write_text(json.dumps(study, indent=2))
    return folder


def grid_spec(name: str = "ablation", categories: Sequence[str] = MVTEC_SUBSET,
              seeds: Sequence[int] = (0, 1, 2), rows: Sequence[tuple[bool, bool, str]] = PAPER_SWITCH_ROWS,
              **overrides: Any) -> StudySpec:
    """The paper's Table 3 as a grid: every switch row repeated over ``seeds``, all completed."""
    trials = []
    for i, (ang, ffm, attention) in enumerate(rows):
        for seed in seeds:
            params = {"use_ang": ang, "use_ffm": ffm, "attention": attention, "seed": seed, "epochs": EPOCHS}
            trials.append(TrialSpec(f"grid_{i:02d}_s{seed}", "completed", params))
    space = {"name": name, "grid": {"use_ang": [False, True], "use_ffm": [False, True],
                                    "attention": ["spatial", "mixed"], "seed": list(seeds)},
             "fixed": {"epochs": EPOCHS}}
    values = {"name": name, "kind": "grid", "categories": categories, "trials": trials, "space": space,
              "searched": ["use_ang", "use_ffm", "attention", "seed"], "fixed": {"epochs": EPOCHS}}
    values.update(overrides)
    return StudySpec(**values)


SEARCH_SETTINGS = (
    {"noise_intensity": 1.0, "lambda_ang": 0.6, "attention": "mixed"},
    {"noise_intensity": 0.4, "lambda_ang": 0.2, "attention": "spatial"},
    {"noise_intensity": 1.6, "lambda_ang": 0.9, "attention": "mixed"},
    {"noise_intensity": 0.7, "lambda_ang": 0.5, "attention": "spatial"},
    {"noise_intensity": 1.2, "lambda_ang": 0.3, "attention": "mixed"},
)


def repeats_spec(name: str = "ablation", categories: Sequence[str] = MVTEC_SUBSET, repeats: int = 3,
                 rows: Sequence[tuple[bool, bool, str]] = PAPER_SWITCH_ROWS, **overrides: Any) -> StudySpec:
    """Table 3 as a grid with repeats: one trial per switch row, each training ``repeats`` seeds inside."""
    trials = [TrialSpec(f"rep_{i:02d}", "completed", {"use_ang": ang, "use_ffm": ffm, "attention": attention,
                                                      "seed": 0, "epochs": EPOCHS})
              for i, (ang, ffm, attention) in enumerate(rows)]
    space = {"name": name, "repeats": repeats,
             "grid": {"use_ang": [False, True], "use_ffm": [False, True], "attention": ["spatial", "mixed"]},
             "fixed": {"epochs": EPOCHS}}
    values = {"name": name, "kind": "grid", "categories": categories, "trials": trials, "space": space,
              "searched": ["use_ang", "use_ffm", "attention"], "fixed": {"epochs": EPOCHS}, "repeats": repeats}
    values.update(overrides)
    return StudySpec(**values)


def search_spec(name: str = "ang", categories: Sequence[str] = EMBEDDED_CATEGORIES,
                best_seeds: Sequence[int] = (0, 1, 2), **overrides: Any) -> StudySpec:
    """A search over noise_intensity, lambda_ang and attention: the first setting repeated over
    ``best_seeds``, the others once, plus one stopped, failed, running and pending trial each."""
    trials = []
    for seed in best_seeds:
        trials.append(TrialSpec(f"ang_s{seed}", "completed", {**SEARCH_SETTINGS[0], "seed": seed}))
    for i, setting in enumerate(SEARCH_SETTINGS[1:], start=1):
        trials.append(TrialSpec(f"ang_{i:02d}", "completed", {**setting, "seed": 0}))
    trials.append(TrialSpec("ang_stop", "stopped", {"noise_intensity": 2.0, "lambda_ang": 0.1,
                                                    "attention": "spatial", "seed": 0}))
    trials.append(TrialSpec("ang_fail", "failed", {"noise_intensity": 0.1, "lambda_ang": 0.8,
                                                   "attention": "mixed", "seed": 0},
                            error="RuntimeError: CUDA out of memory"))
    # A running trial whose intermediate value beats every finished trial: it must not become the best.
    trials.append(TrialSpec("ang_run", "running", {"noise_intensity": 1.0, "lambda_ang": 2.0,
                                                   "attention": "mixed", "seed": 0}))
    trials.append(TrialSpec("ang_wait", "pending", {"noise_intensity": 0.9, "lambda_ang": 0.4,
                                                    "attention": "mixed", "seed": 0}, has_metrics=False))
    space = {"name": name, "search": {"noise_intensity": {"type": "float", "low": 0.1, "high": 2.0},
                                      "lambda_ang": {"type": "float", "low": 0.05, "high": 2.0, "log": True},
                                      "attention": {"type": "categorical", "choices": ["mixed", "spatial"]}},
             "fixed": {"use_ang": True, "use_ffm": True}, "num_samples": 8}
    values = {"name": name, "kind": "search", "categories": categories, "trials": trials, "space": space,
              "searched": ["noise_intensity", "lambda_ang", "attention"],
              "fixed": {"use_ang": True, "use_ffm": True}}
    values.update(overrides)
    return StudySpec(**values)


def write_baseline(folder: Path, categories: Sequence[str], image_auroc: float = 0.99,
                   pixel_auroc: float = 0.97) -> pd.DataFrame:
    """A baseline.csv as the report writes it (per category, the metric columns), with known values."""
    rows = [{"category": category, "image_auroc": image_auroc - 0.01 * i, "pixel_auroc": pixel_auroc - 0.01 * i,
             "aupro": 0.9, "image_ap": 0.95, "pixel_ap": 0.6, "pixel_f1_max": 0.62}
            for i, category in enumerate(categories)]
    frame = pd.DataFrame(rows, columns=["category", *METRICS])
    frame.to_csv(Path(folder) / "baseline.csv", index=False)
    return frame


def grid_study(root: Path, **kwargs: Any) -> Path:
    return write_study(root, grid_spec(**kwargs))


def search_study(root: Path, **kwargs: Any) -> Path:
    return write_study(root, search_spec(**kwargs))


class _ReferenceFinder(HTMLParser):
    """Collects every resource a page would fetch from another host (src/href of fetching tags, CSS url())."""

    FETCHING_TAGS = {"script", "link", "img", "iframe", "source", "video", "audio", "embed", "object", "image"}
    REMOTE = re.compile(r"^\s*(https?:|//)", re.IGNORECASE)
    CSS_URL = re.compile(r"(?:url\(\s*['\"]?|@import\s+['\"])\s*((?:https?:)?//[^'\")\s]+)", re.IGNORECASE)

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.image_sources: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_style = tag == "style"
        if tag == "img":
            self.image_sources += [value or "" for name, value in attrs if name == "src"]
        if tag in self.FETCHING_TAGS:
            for name, value in attrs:
                if name in ("src", "href", "data", "srcset") and value and self.REMOTE.match(value):
                    self.found.append(f"<{tag} {name}={value}>")
        for name, value in attrs:
            if name == "style" and value:
                self.found += self.CSS_URL.findall(value)

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.found += self.CSS_URL.findall(data)


def external_references(html_text: str) -> list[str]:
    """Resources of ``html_text`` that would be fetched from the network (empty for an offline page).

    Script bodies are not tags to the parser, so URLs that plotly.js merely mentions in its code don't count.
    """
    finder = _ReferenceFinder()
    finder.feed(html_text)
    return finder.found


def embedded_images(html_text: str) -> list[str]:
    """The ``src`` of every ``<img>`` tag of the page (script bodies excluded)."""
    finder = _ReferenceFinder()
    finder.feed(html_text)
    return finder.image_sources


def hand_ci(values: list[float]) -> tuple[float, float]:
    """Mean and t-based 95% half width, written out."""
    array = np.asarray(values, dtype=float)
    n = len(array)
    s = math.sqrt(((array - array.mean()) ** 2).sum() / (n - 1))
    return float(array.mean()), float(stats.t.ppf(0.975, n - 1) * s / math.sqrt(n))


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def report_sections(text: str) -> dict[str, str]:
    """A report's ``<section id=...>`` bodies by id."""
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', text, flags=re.S))
