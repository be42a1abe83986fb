"""``python study/run.py``: run a study of MAAE's hyperparameters with Optuna under Ray Tune.

Order of work: everything cheap is validated first (space file, configuration, flags, data, the cluster's
address and whether a trial's workers can ever fit), then the frozen-backbone features are computed once
into the shared cache, then Ray is started (or joined) and the trials run. Any problem with the input is one
line on stderr and exit code 2, and leaves nothing under ``results/<name>``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maae.config import PRESETS, MAAEConfig, parse_set_arguments
from maae.errors import EXIT_USAGE, ConfigError, MAAEError
from study import results as res
from study.protocol import (
    BEST_DIR,
    FAILED,
    HISTORY_FILE,
    METRIC_NAMES,
    PENDING,
    PER_CATEGORY_FILE,
    RAY_DIR,
    REPORT_FILE,
    RUNNING,
    STUDY_FILE,
    STUDY_FINISHED,
    STUDY_INTERRUPTED,
    STUDY_RUNNING,
    TRAIN_RUNS,
    TRIALS_FILE,
)
from study.space import (
    StudySpace,
    as_plain,
    base_config,
    check_against_base,
    feature_variants,
    hyperparameter_columns,
    load_space,
    study_overrides,
    study_preset,
    summary,
)
from study.tune import cluster, leaks
from study.tune.connect import EXIT_RAY_UNAVAILABLE, JOIN_TIMEOUT_S, LOCAL_START_TIMEOUT_S, RayUnavailableError
from study.tune.settings import DEFAULT_WORKER_RETRIES
from study.tune.stopping import registry_name

REPO_ROOT = Path(__file__).resolve().parents[1]
EXIT_INTERRUPTED = 130
SHARED_FEATURE_CACHE = "feature-cache"
EXAMPLES_PER_CATEGORY = 3
RESUME_KEYS = ("space", "data_root", "categories", "preset", "fixed", "repeats")
# study.json: whether one-worker trials were resized (True) or kept their CPUs and reused actors (False).
RESIZE_KEY = "resize_trials"


def build_parser(prog: str = "python study/run.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Search MAAE's hyperparameters with Optuna (TPE) and ASHA under Ray Tune; a one-worker "
                    "trial trains in Tune's trial actor, a trial of 2+ workers is a Ray Train TorchTrainer run "
                    "(DDP). Results go to <results>/<name>/.")
    parser.add_argument("--space", required=True, help="search space YAML (see search_spaces/README.md)")
    parser.add_argument("--data", help="data set in MVTec-AD layout (default: the embedded set)")
    parser.add_argument("--categories", help="comma-separated subset of categories (default: all)")
    parser.add_argument("--preset", choices=PRESETS, help="base settings (default: the space's preset, else quick)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                        help="fix a MAAEConfig field for every trial (repeatable)")
    parser.add_argument("--epochs", type=int, help="override the number of epochs of every trial")
    parser.add_argument("--num-samples", type=int, help="trials to sample (grid: repetitions of the grid)")
    # Text, checked by the space (one line naming --repeats on bad input, not argparse's usage block).
    parser.add_argument("--repeats", metavar="K",
                        help="seeds per trial: every configuration trains with seeds seed, seed+1, ..., "
                             "seed+K-1 and reports their mean (default: the space's repeats, else 1)")
    parser.add_argument("--name", help="study name (default: the space's name)")
    parser.add_argument("--results", default="results", help="results folder (default: results/)")
    parser.add_argument("--address", help="join a Ray cluster: 'auto' or host:port (default: a local Ray)")
    parser.add_argument("--storage", help="shared path or URI for Ray's experiment folder on a cluster "
                                          "(default: <results>/<name>/ray)")
    parser.add_argument("--optuna-storage", metavar="URL",
                        help="Optuna RDB storage for a search's trials, e.g. a database shared on a cluster "
                             "(default: sqlite:///<results>/<name>/optuna.db; see study/optuna_storage.py)")
    parser.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers per trial (DDP)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--max-concurrent", type=int,
                        help="most trials at once (default: as many as the cluster fits)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all of this machine)")
    parser.add_argument("--seed", type=int, default=0, help="seed of Optuna's TPE sampler")
    parser.add_argument("--worker-retries", type=int, default=DEFAULT_WORKER_RETRIES,
                        help="restarts of a trial's workers after a worker process died")
    parser.add_argument("--resume", action="store_true",
                        help="continue the study <results>/<name> after it was interrupted or killed")
    parser.add_argument("--no-examples", action="store_true", help="skip the example pictures in best/")
    parser.add_argument("--verbose", action="store_true", help="also show the logs of Ray's workers")
    parser.add_argument("--no-resize", action="store_true",
                        help="one-worker trials keep their CPUs and reuse Ray's trial actors (each trial starts "
                             "about 3-4 s sooner) instead of taking CPUs left idle in the study's tail")
    parser.add_argument("--dashboard", action="store_true",
                        help="start the local Ray with its dashboard (default: only for trials of 2+ workers, "
                             "whose Ray Train clean-up needs the dashboard's state API)")
    parser.add_argument("--connect-timeout", type=float, metavar="SECONDS",
                        help="seconds Ray may take to start, or to let the study join at --address, before the "
                             f"study gives up with exit code 3 (default: {LOCAL_START_TIMEOUT_S:g} to start, "
                             f"{JOIN_TIMEOUT_S:g} to join)")
    parser.add_argument("--clean-leaked", action="store_true",
                        help="with --address: remove placement groups of ended jobs that nothing uses "
                             "(without it they are listed with the command that removes them)")
    return parser


@dataclass
class Plan:
    """The validated inputs of one study."""

    args: argparse.Namespace
    space: StudySpace
    preset: str
    base: MAAEConfig
    fixed: dict[str, Any]
    hyper_columns: list[str]
    results_dir: Path
    data_root: Path
    categories: list[str]
    shape: cluster.WorkerShape
    address: str | None
    num_cpus: int
    ray_storage: str
    env_vars: dict[str, str]
    optuna_storage: str | None = None  # the search's Optuna storage URL (study.optuna_storage); None for a grid
    # --resume: the study.json the interrupted run wrote (read once, when the resume is checked); else empty.
    previous_study: dict[str, Any] = field(default_factory=dict)


def main(argv: Sequence[str] | None = None, prog: str = "python study/run.py") -> int:
    """The study's command line; returns the exit code (2 with one line on stderr for bad input)."""
    args = build_parser(prog).parse_args(argv)
    try:
        plan = validate(args)
        return run(plan)
    except MAAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except RayUnavailableError as err:  # Ray cannot be reached or started: one line, never a hang
        print(f"error: {err}", file=sys.stderr)
        return EXIT_RAY_UNAVAILABLE
    except KeyboardInterrupt:  # before the trials started (Tune handles Ctrl-C itself while they run)
        print("interrupted before the study started", file=sys.stderr)
        return EXIT_INTERRUPTED


# ------------------------------------------------------------------------------------ validation ---

def _command_line_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The MAAEConfig fields the command line fixes: every ``--set``, and ``--epochs``."""
    overrides = parse_set_arguments(list(args.set))
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    return overrides


def validate(args: argparse.Namespace) -> Plan:
    """All checks that need no Ray, in order of cost; raises one-line MAAEErrors."""
    space = load_space(Path(args.space)).with_overrides(name=args.name, num_samples=args.num_samples,
                                                        repeats=args.repeats)
    overrides = _command_line_overrides(args)
    base = base_config(space, preset_name=args.preset, overrides=overrides)
    check_against_base(space, base)
    fixed = study_overrides(space, overrides, base)
    shape = cluster.WorkerShape(args.workers_per_trial, args.cpus_per_worker, args.gpus_per_worker)
    cluster.check_shape(shape)
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent: expected an integer >= 1, got {args.max_concurrent}")
    if args.worker_retries < 0:
        raise ConfigError(f"--worker-retries: expected an integer >= 0, got {args.worker_retries}")
    results_dir = (Path(args.results) / space.name).resolve()
    _check_results_dir(results_dir, args.resume)

    if args.connect_timeout is not None and not args.connect_timeout > 0:
        raise ConfigError(f"--connect-timeout: expected a number of seconds > 0, got {args.connect_timeout:g}")
    if args.clean_leaked and not args.address:
        raise ConfigError("--clean-leaked: only with --address (a private local Ray starts without leftovers)")
    address = cluster.resolve_address(args.address) if args.address else None
    num_cpus = args.num_cpus or cluster.local_cpus()
    if args.num_cpus is not None and args.num_cpus < 1:
        raise ConfigError(f"--num-cpus: expected an integer >= 1, got {args.num_cpus}")
    if address is None:
        cluster.check_fits(shape, cluster.local_resources(num_cpus), f"this machine (--num-cpus {num_cpus})")

    categories_requested = _categories(args.categories)
    data_root = _data_root(args.data)
    from maae.data import resolve_categories

    categories = resolve_categories(data_root, categories_requested)
    from maae.baseline import check_has_defects

    check_has_defects(data_root, categories)  # every report shows the baseline, whose metrics need defects
    storage = args.storage.rstrip("/") if args.storage else None
    ray_storage = f"{storage}/{space.name}" if storage else str(results_dir / RAY_DIR)
    plan = Plan(args=args, space=space, preset=study_preset(space, args.preset), base=base, fixed=fixed,
                hyper_columns=hyperparameter_columns(space, fixed), results_dir=results_dir,
                data_root=data_root.resolve(), categories=categories, shape=shape, address=address,
                num_cpus=num_cpus, ray_storage=ray_storage, env_vars={})
    plan.env_vars = study_environment(local=address is None, storage=storage)
    if args.resume:
        plan.previous_study = _check_resume(plan)
    from study.optuna_storage import resolve_optuna_storage
    from study.protocol import KIND_SEARCH

    plan.optuna_storage = resolve_optuna_storage(args.optuna_storage, results_dir, space.name,
                                                 searched=space.kind == KIND_SEARCH, resume=args.resume)
    return plan


def _categories(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError(f"--categories: expected a comma-separated list of category names, got {text!r}")
    return names


def _data_root(path: str | None) -> Path:
    if path:
        root = Path(path)
        if not root.is_dir():
            raise ConfigError(f"--data {root}: no such folder (expected a data set in MVTec-AD layout)")
        return root
    from maae.synthetic import embedded_data_root

    return embedded_data_root()


def _check_results_dir(results_dir: Path, resume: bool) -> None:
    study_file = results_dir / STUDY_FILE
    if resume and not study_file.is_file():
        raise ConfigError(f"--resume: {results_dir} holds no study to resume (no {STUDY_FILE}); "
                          "run without --resume to start it")
    if not resume and results_dir.exists() and any(results_dir.iterdir()):
        raise ConfigError(f"--name: {results_dir} already holds a study; pass --resume to continue it, or "
                          "another --name (or --results) to start a new one")


def _check_resume(plan: Plan) -> dict[str, Any]:
    """The study.json of the study to resume, once checked to come from the same command."""
    import json

    study_file = plan.results_dir / STUDY_FILE
    try:
        before = json.loads(study_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{study_file}: unreadable ({err}); cannot resume") from None
    now = _study_identity(plan)
    for key in RESUME_KEYS:
        if key == "preset" and before.get("base_config"):
            continue  # the settings are compared instead: a renamed preset with the same values may resume
        if key in before and before[key] != now[key]:
            raise ConfigError(f"--resume: {key} differs from the study in {plan.results_dir} (was "
                              f"{_short(before[key])}, now {_short(now[key])}); expected the same command")
    _check_same_base(before.get("base_config"), plan)
    return before


def _check_same_base(saved: dict[str, Any] | None, plan: Plan) -> None:
    """Refuse to resume when the command now resolves to other settings than the study started with (a preset
    whose values changed since): its remaining trials would silently train another model than its first ones.
    The error names the preset that has the saved settings, when one does."""
    if not saved:  # studies from before base_config was recorded
        return
    changed = _changed_fields(saved, plan.base)
    if not changed:
        return
    overrides = _command_line_overrides(plan.args)
    matching = [name for name in PRESETS
                if not _changed_fields(saved, base_config(plan.space, preset_name=name, overrides=overrides))]
    hint = f"resume with --preset {matching[0]}, which has them" if matching else "expected the same settings"
    raise ConfigError(f"--resume: preset {plan.preset!r} now resolves to other settings than the study in "
                      f"{plan.results_dir} started with ({'; '.join(changed[:4])}); {hint}")


def _changed_fields(saved: dict[str, Any], base: MAAEConfig) -> list[str]:
    import json

    now = json.loads(json.dumps(as_plain(base.to_dict()), default=str))
    return [f"{key} was {saved[key]!r}, now {now[key]!r}" for key in sorted(saved)
            if key in now and saved[key] != now[key]]


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _study_identity(plan: Plan) -> dict[str, Any]:
    import json

    return json.loads(json.dumps({
        "space": plan.space.raw, "data_root": str(plan.data_root), "categories": plan.categories,
        "preset": plan.preset, "fixed": plan.fixed, "repeats": plan.space.repeats}, default=str))


def study_environment(*, local: bool, storage: str | None = None) -> dict[str, str]:
    """Environment of every Ray process of a study (and of the study's own process): Ray settings, the
    shared feature cache (on ``--storage`` when it is a path and ``MAAE_FEATURE_CACHE`` is not set), the
    data cache, and the repository on ``PYTHONPATH``."""
    from maae.features import FEATURE_CACHE_ENV
    from maae.synthetic import DATA_CACHE_ENV

    env = dict(cluster.STUDY_ENV)
    env.update({key: os.environ[key] for key in cluster.USER_SETTABLE_ENV if os.environ.get(key)})
    if local:
        env.update(cluster.LOCAL_ENV)
    if os.environ.get(FEATURE_CACHE_ENV):
        env[FEATURE_CACHE_ENV] = os.environ[FEATURE_CACHE_ENV]
    elif storage and "://" not in storage:
        env[FEATURE_CACHE_ENV] = str(Path(storage).resolve() / SHARED_FEATURE_CACHE)
    if os.environ.get(DATA_CACHE_ENV):
        env[DATA_CACHE_ENV] = os.environ[DATA_CACHE_ENV]
    python_path = [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(python_path))
    return env


# ------------------------------------------------------------------------------------------- run ---

def run(plan: Plan) -> int:
    os.environ.update({key: value for key, value in plan.env_vars.items() if key != "PYTHONPATH"})
    say(summary(plan.space))
    say(f"data {plan.data_root} ({len(plan.categories)} categories: {', '.join(plan.categories)}), "
        f"preset {plan.preset}, {plan.base.epochs} epochs, {plan.shape.describe()} per trial")
    warm_feature_cache(plan)
    started_ray = time.perf_counter()
    own_ray = not cluster.is_connected()  # a caller (e.g. a test session) may have connected already
    timeout = plan.args.connect_timeout or (JOIN_TIMEOUT_S if plan.address else LOCAL_START_TIMEOUT_S)
    if not own_ray:
        where = "the Ray this process is connected to"
    elif plan.address is None:
        cluster.start_local(plan.num_cpus, plan.env_vars, log_to_driver=plan.args.verbose, connect_timeout=timeout,
                            dashboard=plan.args.dashboard or cluster.needs_dashboard(plan.shape))
        where = f"local Ray ({plan.num_cpus} CPUs)"
    else:
        cluster.join(plan.address, plan.env_vars, log_to_driver=plan.args.verbose, connect_timeout=timeout)
        where = f"the cluster at {plan.address}"
    watch = cluster.watch(where) if own_ray else None  # a head that dies: one line and exit code 3
    try:
        if plan.address is not None:
            leaks.check_at_start(plan.address, cluster.dashboard_url(), clean=plan.args.clean_leaked, say=say)
        resources = cluster.cluster_resources()
        cluster.check_fits(plan.shape, resources, where)
        concurrent = cluster.max_concurrent_trials(plan.shape, resources, plan.args.max_concurrent)
        # Automatic actor reuse only on a private local Ray: on a cluster whose node died, Tune with reuse kept
        # running one trial at a time in the survivor's actor while a replacement node sat idle (seen in the
        # node-death test), so a cluster study reuses actors only when asked (--no-resize).
        can_grow = cluster.trials_can_grow(plan.shape, resources)
        resize = not plan.args.no_resize and (plan.address is not None or can_grow)
        why_fixed = " (--no-resize)" if plan.args.no_resize else " (no CPU beyond one trial's: nothing to resize)"
        saved = plan.previous_study.get(RESIZE_KEY)  # absent before studies recorded it
        kept_mode = isinstance(saved, bool) and saved != resize
        if kept_mode:
            # Tuner.restore brings back the scheduler (and actor reuse) the study was started with.
            resize, why_fixed = bool(saved), " (as when this study started)"
        dashboard = cluster.dashboard_url()
        say(f"Ray ready in {time.perf_counter() - started_ray:.1f}s: {where}, {resources.describe()}; "
            f"up to {concurrent} trial(s) at once" + (f"; dashboard {dashboard}" if dashboard else ""))
        if kept_mode:
            say(f"--resume: a resumed study keeps the mode it started with, {_resize_mode_words(resize)} "
                f"(Tune restores its scheduler), whatever --no-resize says now")
        if plan.shape.workers == 1:
            say("spare CPUs go to running trials (Tune's ResourceChangingScheduler)" if resize else
                "trials keep their CPUs and reuse Ray's trial actors" + why_fixed)
        return run_study(plan, concurrent, resize)
    finally:
        if own_ray:
            cluster.shutdown(watch)


def _resize_mode_words(resize: bool) -> str:
    return "spare CPUs going to running trials" if resize else "trials keeping their CPUs"


def warm_feature_cache(plan: Plan) -> None:
    """Compute the frozen-backbone features once, before any trial (trials then only open memory maps)."""
    from maae.engine import default_device, prepare_data
    from maae.features import FEATURE_CACHE_ENV
    from maae.training import print_progress

    started = time.perf_counter()
    for variant in feature_variants(plan.space, plan.base):
        if variant.feature_cache:
            prepare_data(variant, plan.data_root, plan.categories, device=default_device(),
                         progress=print_progress)
    say(f"feature cache ready in {time.perf_counter() - started:.1f}s "
        f"({os.environ.get(FEATURE_CACHE_ENV) or 'default location'})")


def run_study(plan: Plan, concurrent: int, resize: bool = True) -> int:
    from study.tune import driver
    from study.tune.callback import RecorderSettings
    from study.tune.settings import TrialSettings

    space = plan.space
    trial_settings = TrialSettings(
        base_config=plan.base, data_root=str(plan.data_root), categories=tuple(plan.categories),
        eval_every=space.eval_every, workers=plan.shape.workers, cpus_per_worker=plan.shape.cpus,
        gpus_per_worker=plan.shape.gpus, train_storage=f"{plan.ray_storage}/{TRAIN_RUNS}",
        stop_registry=registry_name(str(plan.results_dir)), worker_retries=plan.args.worker_retries,
        repeats=space.repeats)
    recorder_settings = RecorderSettings(
        results_dir=str(plan.results_dir), metric=space.metric, mode=space.mode,
        base_config=plan.base, hyper_columns=tuple(plan.hyper_columns),
        total_trials=space.total_trials)
    tuner_plan = driver.TunerPlan(space=space, base=plan.base, trial_settings=trial_settings,
                                  recorder_settings=recorder_settings, ray_storage=plan.ray_storage,
                                  max_concurrent=concurrent, seed=plan.args.seed,
                                  optuna_storage=plan.optuna_storage, resize_trials=resize)
    study = study_payload(plan)
    study[RESIZE_KEY] = resize
    plan.results_dir.mkdir(parents=True, exist_ok=True)
    res.write_study_json(plan.results_dir, study)

    resumed = plan.args.resume and driver.can_restore(tuner_plan)
    tuner = driver.restore_tuner(tuner_plan) if resumed else driver.build_tuner(tuner_plan)
    say(("resuming" if resumed else "starting") + f" study {space.name}: {space.total_trials} trial(s) "
        f"-> {plan.results_dir}")
    if plan.optuna_storage:
        say(f"Optuna records the search in {study['optuna_storage']} (optuna-dashboard opens it)")
    previous_term = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    previous_int = signal.getsignal(signal.SIGINT)
    interrupted = False
    try:
        tuner.fit()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        # Tune leaves its own Ctrl-C handler installed after fit: the next Ctrl-C, during the examples or a
        # report that computes the baseline for minutes, would only print Tune's "ending Ray Tune run".
        signal.signal(signal.SIGINT, previous_int)
    return finish(plan, study, interrupted)


def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    """SIGTERM stops the study like Ctrl-C: Tune saves its state and the study can be resumed."""
    os.kill(os.getpid(), signal.SIGINT)


def study_payload(plan: Plan) -> dict[str, Any]:
    space = plan.space
    previous = plan.previous_study
    identity = _study_identity(plan)
    from study import optuna_storage

    return {
        "name": space.name, "description": space.description, "space_file": str(space.path),
        "space": identity["space"], "command": res.command_line(), "data_root": str(plan.data_root),
        "categories": plan.categories, "preset": plan.preset, "metric": space.metric, "mode": space.mode,
        "metrics": list(space.metrics), "modes": list(space.modes), "kind": space.kind,
        "searched": list(space.searched), "fixed": identity["fixed"], "repeats": space.repeats,
        "versions": res.versions(),
        "git_commit": res.git_commit(REPO_ROOT), "started_at": previous.get("started_at") or res.now_iso(),
        "ended_at": None, "status": STUDY_RUNNING, "num_samples": space.num_samples,
        "total_trials": space.total_trials, "best_trial_id": previous.get("best_trial_id"),
        "workers_per_trial": plan.shape.workers, "ray_storage": plan.ray_storage,
        "base_config": as_plain(plan.base.to_dict()),
        **optuna_storage.study_record(plan.optuna_storage, space.name),
    }


def finish(plan: Plan, study: dict[str, Any], interrupted: bool) -> int:
    """Final tables, examples of the best trial, ``study.json``, the report, and the summary on stdout."""
    recorder = res.StudyRecorder(plan.results_dir, metric=plan.space.metric, mode=plan.space.mode,
                                 hyper_columns=plan.hyper_columns, hyper_values=lambda params: dict(params))
    recorder.load_existing()
    unfinished = [r for r in recorder.trials.values() if r.status in (RUNNING, PENDING)]
    interrupted = interrupted or bool(unfinished) or len(recorder.trials) < plan.space.total_trials
    if plan.optuna_storage and not interrupted:
        from study.optuna_storage import fail_orphaned_trials

        orphans = fail_orphaned_trials(plan.optuna_storage, plan.space.name)
        if orphans:
            say(f"marked {orphans} Optuna trial(s) that a killed run left running as failed (--resume proposed "
                "new ones in their place)")
    best = recorder.best()
    best_dir = plan.results_dir / BEST_DIR
    study.update(ended_at=res.now_iso(), best_trial_id=best.trial_id if best else None,
                 status=STUDY_INTERRUPTED if interrupted else STUDY_FINISHED)
    res.write_study_json(plan.results_dir, study)
    from study.tune.callback import write_report_safely

    try:  # the trials' results are complete here; what follows only presents them
        if best is not None and best_dir.is_dir() and not plan.args.no_examples and not interrupted:
            write_examples_safely(best_dir, plan.data_root)
        write_report_safely(plan.results_dir, False)
    except KeyboardInterrupt:
        say(f"interrupted while writing the examples and the report; the study's results in {plan.results_dir} "
            f"are complete (status {study['status']}); write the report with: python study/report.py "
            f"{plan.results_dir}")
        return EXIT_INTERRUPTED
    print_summary(plan, recorder, best)
    if interrupted:
        say(f"interrupted: continue with the same command plus --resume "
            f"(finished trials are kept), results so far in {plan.results_dir}")
        return EXIT_INTERRUPTED
    return 0


def write_examples_safely(best_dir: Path, data_root: Path) -> None:
    """Example heatmaps of the best trial in ``best/examples``; a failure is a warning, not a failed study."""
    from maae.examples import write_examples

    try:
        write_examples(best_dir, data_root, best_dir / "examples", per_category=EXAMPLES_PER_CATEGORY)
    except Exception as err:  # noqa: BLE001 - pictures are a bonus; the study's numbers are already saved
        say(f"warning: example pictures not written ({type(err).__name__}: {err})")


def print_summary(plan: Plan, recorder: res.StudyRecorder, best: res.TrialRecord | None) -> None:
    counts = recorder.counts()
    say("trials: " + ", ".join(f"{count} {status}" for status, count in counts.items() if count))
    for record in recorder.trials.values():
        if record.status == FAILED:
            say(f"  failed {record.trial_id}: {record.error}")
    if best is None:
        print(f"no completed trial with a {plan.space.metric}; results in {plan.results_dir}")
        return
    params = ", ".join(f"{name}={best.params.get(name)}" for name in plan.space.searched)
    seeds = f", mean over seeds {res.format_seeds(best.seeds)}" if len(best.seeds) > 1 else ""
    print(f"\nbest trial {best.trial_id} ({plan.space.metric} {best.means[plan.space.metric]:.4f}, "
          f"{plan.space.mode}{seeds}){': ' + params if params else ''}")
    rows = [[category, *[values.get(m) for m in METRIC_NAMES]] for category, values in best.per_category.items()]
    rows.append(["mean", *[best.means.get(m) for m in METRIC_NAMES]])
    print(res.table(rows, ["category", *METRIC_NAMES]))
    files = ", ".join((STUDY_FILE, TRIALS_FILE, PER_CATEGORY_FILE, HISTORY_FILE, f"{BEST_DIR}/", REPORT_FILE))
    print(f"\nresults: {plan.results_dir}  ({files})")
    print(f"predict: python -m maae predict --checkpoint {plan.results_dir / BEST_DIR} IMAGE --out OUT")


def say(message: str) -> None:
    print(f"[study] {message}", file=sys.stderr, flush=True)


__all__ = ["build_parser", "main", "study_environment", "validate"]
