"""Run every benchmark of maae-study, print one table, and write ``benchmarks/results/<date>.json``.

    .venv/bin/python benchmarks/run_all.py                 # the full suite (tens of minutes on 2 cores)
    .venv/bin/python benchmarks/run_all.py --tiny          # seconds-scale smoke run (the test uses it)
    .venv/bin/python benchmarks/run_all.py --only train_step --out /tmp/step.json
    .venv/bin/python benchmarks/run_all.py --only train_step --merge   # re-run one, keep the rest of the file

The JSON's top level holds the headline numbers (``feature_cache_speedup``, ``feature_cache_ceiling``,
``ray_overhead_ratio``, ``ray_cost_per_trial_s``, ``optuna_inprocess_ratio``, ``demo_cpu_utilisation``,
``demo_speedup_vs_baseline``, ``train_step_flops_fraction``, ``predict_images_per_s``,
``quick_preset_epoch_ratio`` and a few more; ``null``
when not measured), the table
rows under ``checks``, each benchmark's details under ``benchmarks``, and the machine under ``environment``.
Exit status 1 when a benchmark crashed (its numbers are then ``null`` and its error is in the JSON), else 0:
a missed target is a measurement, not a failure of the suite.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from benchmarks/ itself
    _SCRIPT_DIR = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _SCRIPT_DIR]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from benchmarks import (  # noqa: E402
    demo,
    deploy_speed,
    feature_cache,
    growth,
    inference,
    lever_cost,
    optuna_inprocess,
    ray_overhead,
    train_step,
    trial_start,
)
from benchmarks.common import (  # noqa: E402
    REPO_ROOT,
    TINY_DATA,
    Check,
    Outcome,
    Settings,
    finite,
    load_average,
)
from maae.features import FEATURE_CACHE_ENV  # noqa: E402
from maae.io import write_json_atomic  # noqa: E402

BENCHMARKS = {
    "feature_cache": feature_cache,
    "train_step": train_step,
    "growth": growth,
    "inference": inference,
    "deploy_speed": deploy_speed,  # export parity, onnxruntime / TorchScript / torch images/s
    "trial_start": trial_start,  # a trial process's imports and evaluation metrics
    "lever_cost": lever_cost,  # issue 11's levers: s/epoch and s/evaluation against the sweep preset's
    "ray_overhead": ray_overhead,
    "optuna_inprocess": optuna_inprocess,
    "demo": demo,  # the longest (two default demos): last
}
HEADLINE_KEYS = ("feature_cache_speedup", "feature_cache_ceiling", "ray_overhead_ratio", "ray_cost_per_trial_s",
                 "optuna_inprocess_ratio", "demo_cpu_utilisation", "demo_speedup_vs_baseline",
                 "train_step_flops_fraction", "predict_images_per_s", "trial_import_seconds",
                 "metrics_speedup_vs_sklearn", "quick_preset_epoch_ratio", "highres_preset_epoch_ratio")
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
# One intra-op thread by default: on a shared 2-core machine two threads make a step several times slower and
# its time erratic (measured by train_step's threads=2 variant); pass --threads to choose.
DEFAULT_THREADS = 1
EXIT_BENCHMARK_CRASHED = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/run_all.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="seconds-scale smoke run (tiny data and model)")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help=f"run only these benchmarks (repeatable or comma-separated): {', '.join(BENCHMARKS)}")
    parser.add_argument("--out", help="JSON file to write (default: benchmarks/results/<YYYY-MM-DD>.json)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"torch intra-op threads of the measured code (default: {DEFAULT_THREADS})")
    parser.add_argument("--data", help="data set in MVTec-AD layout (default: the embedded set; --tiny: a tiny "
                                       "generated one)")
    parser.add_argument("--merge", action="store_true",
                        help="update --out in place: replace only the benchmarks run now (with --only), keep the rest")
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch folder (its path is printed)")
    return parser


def selected(only: Sequence[str] | None) -> list[str]:
    if not only:
        return list(BENCHMARKS)
    names = [name.strip() for item in only for name in item.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"error: --only: unknown benchmark {unknown[0]!r}; expected some of: {', '.join(BENCHMARKS)}")
    return [name for name in BENCHMARKS if name in names]


def data_root(args: argparse.Namespace, work_dir: Path) -> Path:
    if args.data:
        return Path(args.data)
    if args.tiny:
        from maae.synthetic import generate_dataset

        root = work_dir / "tiny-data"
        generate_dataset(root, seed=0, **TINY_DATA)
        return root
    from maae.synthetic import embedded_data_root

    return embedded_data_root()


def run_one(name: str, settings: Settings) -> tuple[Outcome | None, dict[str, Any]]:
    say(f"{name} ...")
    started = time.perf_counter()
    try:
        outcome = BENCHMARKS[name].run(settings)
    except Exception as err:  # noqa: BLE001 - one benchmark's crash is reported; the others still run
        traceback.print_exc()
        record = {"seconds": time.perf_counter() - started, "error": f"{type(err).__name__}: {err}"}
        say(f"{name} crashed after {record['seconds']:.0f}s: {record['error']}")
        return None, record
    seconds = time.perf_counter() - started
    say(f"{name} done in {seconds:.0f}s")
    return outcome, {"seconds": seconds, "headline": outcome.headline, "details": outcome.details}


def merged(previous: dict[str, Any], current: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """``previous`` results with the benchmarks in ``names`` replaced by ``current``'s (``--merge``).

    Headline numbers and table rows of the replaced benchmarks come from ``current``; the rest, and the
    environment of the first run, stay; ``reruns`` records what was replaced, when, on which load.
    """
    if previous.get("mode") != current["mode"]:
        raise SystemExit(f"error: --merge: the file holds a {previous.get('mode')} run, this is a {current['mode']} "
                         "run; expected the same mode")
    result = dict(previous)
    result["benchmarks"] = {**previous.get("benchmarks", {}), **current["benchmarks"]}
    result["benchmarks_run"] = list(dict.fromkeys([*previous.get("benchmarks_run", []), *names]))
    for record in current["benchmarks"].values():
        result.update(record.get("headline", {}))
    result["checks"] = [row for row in previous.get("checks", []) if row["benchmark"] not in names]
    result["checks"] += current["checks"]
    order = list(BENCHMARKS)
    result["checks"].sort(key=lambda row: order.index(row["benchmark"]) if row["benchmark"] in order else len(order))
    result["reruns"] = [*previous.get("reruns", []), {
        "benchmarks": list(names), "date": current["date"], "seconds": current["suite_seconds"],
        "environment": current["environment"]}]
    return result


def format_value(check: Check) -> str:
    if check.value is None:
        return "null"
    return f"{check.value:.3g}{check.unit}"


def table(checks: Sequence[Check]) -> str:
    header = ("benchmark", "metric", "value", "target", "result")
    rows = [(c.benchmark, c.metric, format_value(c), c.target or "-",
             "-" if c.passed is None else ("pass" if c.passed else "FAIL")) for c in checks]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in [header, tuple("-" * w for w in widths), *rows]]
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int) -> dict[str, Any]:
    blas = "mkl" if torch.backends.mkl.is_available() else "other"
    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu": cpu_model(), "cpu_count": os.cpu_count(), "blas": blas,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": threads,
            "load_average_1min_start": load_average()}


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = selected(args.only)
    if args.threads < 1:
        raise SystemExit(f"error: --threads: expected an integer >= 1, got {args.threads}")
    today = datetime.date.today().isoformat()
    out = Path(args.out) if args.out else RESULTS_DIR / f"{today}.json"
    torch.set_num_threads(args.threads)
    env = environment(args.threads)
    work_dir = Path(tempfile.mkdtemp(prefix="maae-bench-"))
    previous_cache = os.environ.get(FEATURE_CACHE_ENV)
    os.environ[FEATURE_CACHE_ENV] = str(work_dir / "feature-cache")
    started = time.perf_counter()
    try:
        settings = Settings(tiny=args.tiny, threads=args.threads, work_dir=work_dir,
                            data_root=data_root(args, work_dir), feature_cache_dir=work_dir / "feature-cache")
        checks: list[Check] = []
        headline: dict[str, Any] = dict.fromkeys(HEADLINE_KEYS)
        records: dict[str, Any] = {}
        for name in names:
            outcome, records[name] = run_one(name, settings)
            if outcome is not None:
                checks.extend(outcome.checks)
                headline.update(outcome.headline)
    finally:
        if previous_cache is None:
            os.environ.pop(FEATURE_CACHE_ENV, None)
        else:
            os.environ[FEATURE_CACHE_ENV] = previous_cache
        if args.keep_work:
            say(f"scratch folder kept: {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    env["load_average_1min_end"] = load_average()
    payload = {
        **headline,
        "date": today,
        "mode": "tiny" if args.tiny else "full",
        "benchmarks_run": names,
        "suite_seconds": time.perf_counter() - started,
        "data_root": str(settings.data_root),
        "environment": env,
        "checks": [check.as_dict() for check in checks],
        "benchmarks": records,
    }
    if args.merge and out.is_file():
        payload = merged(json.loads(out.read_text()), payload, names)
    write_json_atomic(out, finite(payload))
    print(table(checks))
    print(f"\nwritten: {out}")
    crashed = [name for name, record in records.items() if "error" in record]
    if crashed:
        say(f"crashed: {', '.join(crashed)} (see 'error' in the JSON)")
        return EXIT_BENCHMARK_CRASHED
    return 0


if __name__ == "__main__":
    sys.exit(main())
