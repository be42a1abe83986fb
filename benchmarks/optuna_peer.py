"""The peer a one-machine user could run instead of the study platform: plain Optuna in one process.

    .venv/bin/python benchmarks/optuna_peer.py --space benchmarks/optuna_peer.yaml --epochs 20 --out peer.json

``optuna.create_study`` with Optuna's TPE sampler and the study's seed, ``study.optimize`` with ``n_jobs``
threads (default: one per CPU), and an objective that builds MAAE's training session through maae's API and
calls ``maae.engine.train_step`` batch by batch, every epoch, then evaluates the last epoch. No early
stopping, no checkpoints, no Ray. The search space and base configuration are the study's own
(:mod:`study.space`).

The same trials as ``python study/run.py --space ... --seed S``: with ``n_jobs > 1`` Optuna reseeds its
sampler in every worker thread, so a seeded ``optimize`` does not repeat its proposals. The peer therefore
asks a TPE sampler seeded with ``S`` for its proposals one after the other first, exactly as Tune's
``OptunaSearch`` asks it, and enqueues them (``study.enqueue_trial``) into the study that ``optimize`` runs
with ``n_jobs`` threads. This is what TPE proposes anyway while a study is within its random start-up
(``n_startup_trials``, 10 by default); beyond that it would propose without seeing the first results, so the
peer refuses more trials than that.

The frozen-backbone features are prepared once for all trials (they do not depend on the searched
parameters). Every thread trains with ``cpus // n_jobs`` intra-op threads. The threads share torch's global
random generator, so a trial's noise draws depend on what the other threads draw meanwhile: the runs are
the same trials, not bit-for-bit the same trainings (the benchmark compares their wall time).

Writes ``--out``: the wall time of ``optimize`` and every trial's parameters, value and seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from benchmarks/ itself
    _SCRIPT_DIR = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _SCRIPT_DIR]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

OPTUNA_DIRECTIONS = {"max": "maximize", "min": "minimize"}
# TPE's random start-up (optuna's TPESampler default n_startup_trials): proposals that need no results.
TPE_STARTUP_TRIALS = 10


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/optuna_peer.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", required=True, help="search space YAML (a study's, with search: ranges)")
    parser.add_argument("--data", help="data set in MVTec-AD layout (default: the embedded set)")
    parser.add_argument("--categories", help="comma-separated categories (default: all)")
    parser.add_argument("--epochs", type=int, help="epochs of every trial (default: the space's)")
    parser.add_argument("--num-samples", type=int, help="trials (default: the space's num_samples)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fix a MAAEConfig field")
    parser.add_argument("--seed", type=int, default=0, help="seed of Optuna's TPE sampler (as study/run.py --seed)")
    parser.add_argument("--n-jobs", type=int, default=os.cpu_count() or 1, help="trials at once (threads)")
    parser.add_argument("--out", required=True, help="JSON file for the timings and trials")
    return parser


def suggest(trial: Any, name: str, distribution: Any) -> Any:
    """``trial.suggest_*`` for one of the study's Optuna distributions (float, int or categorical)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high, step=distribution.step,
                                 log=distribution.log)
    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step,
                                   log=distribution.log)
    raise TypeError(f"{name}: unsupported distribution {type(distribution).__name__}")


def train_and_evaluate(config: Any, data: Any, device: Any, metric: str) -> float:
    """One trial: ``config.epochs`` epochs of ``maae.engine.train_step`` over every model's batches, then the
    last epoch's evaluation; returns its ``metric``."""
    from maae.engine import TrainingSession, train_step
    from maae.evaluation import evaluate

    session = TrainingSession(config, data, device=device)
    for _ in range(config.epochs):
        for key, loader in session.loaders.items():
            for batch in loader:  # cached features: each batch is the list of the backbone's stages
                stages = [stage.to(device) for stage in batch]
                train_step(session.models[key], session.optimizers[key], stages, config)
            session.optimizers[key].end_epoch()
    evaluation = evaluate(session.evaluation_models(), data, config, device=device)
    return float(evaluation.means[metric])


def run_peer(space_path: Path, data_root: Path | None, categories: Sequence[str] | None, epochs: int | None,
             set_arguments: Sequence[str], seed: int, n_jobs: int, num_samples: int | None = None) -> dict[str, Any]:
    """Plain Optuna over the study's space; returns the wall time of ``optimize`` and every trial."""
    import optuna
    import torch

    from maae.config import parse_set_arguments
    from maae.engine import prepare_data
    from maae.synthetic import embedded_data_root
    from study.space import base_config, check_against_base, load_space, optuna_distributions, trial_config

    started = time.perf_counter()
    space = load_space(space_path).with_overrides(name=None, num_samples=num_samples)
    settings = parse_set_arguments(list(set_arguments))
    if epochs is not None:
        settings["epochs"] = epochs
    base = base_config(space, overrides=settings)
    check_against_base(space, base)
    distributions = optuna_distributions(space)
    if space.num_samples > TPE_STARTUP_TRIALS:
        raise SystemExit(f"error: --num-samples: at most {TPE_STARTUP_TRIALS} (TPE's random start-up), got "
                         f"{space.num_samples}")
    threads = max(1, (os.cpu_count() or 1) // n_jobs)
    device = torch.device("cpu")
    data = prepare_data(base, data_root or embedded_data_root(), list(categories) if categories else None,
                        device=device)
    prepared = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    proposals = optuna.create_study(direction=OPTUNA_DIRECTIONS[space.mode],
                                    sampler=optuna.samplers.TPESampler(seed=seed))
    study = optuna.create_study(direction=OPTUNA_DIRECTIONS[space.mode],
                                sampler=optuna.samplers.TPESampler(seed=seed))
    for _ in range(space.num_samples):  # the seeded proposals, in order, as Tune's OptunaSearch asks for them
        study.enqueue_trial(proposals.ask(distributions).params)
    seconds: dict[int, float] = {}

    def objective(trial: optuna.Trial) -> float:
        torch.set_num_threads(threads)  # per thread: each objective runs in a thread of its own
        began = time.perf_counter()
        params = {name: suggest(trial, name, distribution) for name, distribution in distributions.items()}
        value = train_and_evaluate(trial_config(base, params), data, device, space.metric)
        seconds[trial.number] = time.perf_counter() - began
        return value

    study.optimize(objective, n_trials=space.num_samples, n_jobs=n_jobs)
    ended = time.perf_counter()
    return {
        "seconds_total": ended - started, "seconds_prepare": prepared - started, "seconds_optimize": ended - prepared,
        "n_jobs": n_jobs, "threads_per_trial": threads, "seed": seed, "epochs": base.epochs,
        "categories": list(data.categories), "metric": space.metric,
        "trials": [{"number": t.number, "params": t.params, "value": t.value, "state": t.state.name,
                    "seconds": seconds.get(t.number)} for t in study.trials],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from maae.io import write_json_atomic

    categories = [c.strip() for c in args.categories.split(",")] if args.categories else None
    result = run_peer(Path(args.space), Path(args.data) if args.data else None, categories, args.epochs,
                      args.set, args.seed, args.n_jobs, args.num_samples)
    write_json_atomic(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
