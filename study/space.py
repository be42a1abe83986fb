"""Search spaces: the YAML schema of ``search_spaces/*.yaml``, its validation, and its translation for Tune.

A space file says what a study varies and how it is judged (see ``search_spaces/README.md`` for the schema).
Everything is checked here, before Ray starts, and every problem is one :class:`~maae.errors.ConfigError`
line naming the file, the field and what was expected. Nothing in this module imports Ray or Optuna at import
time: the translation functions import them when called.

Two kinds of study come out of a file:

- ``search``: ``search:`` names parameters with ranges or choices; Optuna's TPE sampler proposes
  ``num_samples`` trials and ASHA may stop bad ones early.
- ``grid``: ``grid:`` names parameters with lists of values; every combination runs (``num_samples`` times),
  with no searcher and no early stopping, as an ablation needs. A file with neither is a grid of one trial.

``repeats: k`` (or ``--repeats K``) trains every configuration with k seeds inside its trial (see
:mod:`study.tune.seed_group`); a seed axis in ``grid`` or ``search`` is the other way to repeat seeds, and
the two cannot be combined. Besides MAAEConfig fields, ``search`` and ``grid`` accept ``lambda_ratio``
(:data:`DERIVED_PARAMS`): ANG's ``lambda_re / lambda_ang``, the only combination of the two that matters
under Adam; a trial's ``lambda_re`` is then ``lambda_ratio * lambda_ang``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from maae.config import PRESETS, RENAMED_PRESETS, MAAEConfig, preset
from maae.errors import ConfigError
from study.protocol import (
    DEFAULT_METRIC,
    DEFAULT_MODE,
    KIND_GRID,
    KIND_SEARCH,
    METRIC_NAMES,
    MODES,
    SEED_COLUMN,
)

PARAM_FLOAT = "float"
PARAM_INT = "int"
PARAM_CATEGORICAL = "categorical"
PARAM_TYPES = (PARAM_FLOAT, PARAM_INT, PARAM_CATEGORICAL)
SCHEDULER_ASHA = "asha"
SCHEDULER_NONE = "none"
SCHEDULERS = (SCHEDULER_ASHA, SCHEDULER_NONE)

DEFAULT_SEARCH_SAMPLES = 8
DEFAULT_GRID_REPEATS = 1
# Seeds per trial (``repeats``): one unless the space or ``--repeats`` says more.
DEFAULT_REPEATS = 1
DEFAULT_PRESET = "quick"
DEFAULT_GRACE_PERIOD = 2
DEFAULT_REDUCTION_FACTOR = 2
DEFAULT_EVAL_EVERY = 1
# ``eval_every: final``: evaluate after the last epoch only (stored as 0).
EVAL_FINAL = "final"
EVAL_FINAL_ONLY = 0
# Study names become folder names under results/ and Ray experiment names.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

TOP_LEVEL_KEYS = ("name", "description", "metric", "mode", "num_samples", "preset", "fixed", "search", "grid",
                  "scheduler", "eval_every", "repeats")
PARAM_KEYS = ("type", "low", "high", "log", "step", "choices")
SCHEDULER_KEYS = ("type", "grace_period", "reduction_factor")
# Where a trial's configuration comes from, in its error messages (see :func:`trial_config`).
TRIAL_SOURCE = "trial parameters"
# The fields the frozen-backbone features depend on (one feature cache per combination).
FEATURE_FIELDS = ("backbone", "backbone_weights", "image_size")

# Parameters that ``search`` and ``grid`` accept besides MAAEConfig's fields, each with its type. W's optimiser
# is Adam, which divides out the scale of its gradient, and ANG's gradient is lambda_ang times
# (-dL_e/dW + lambda_re / lambda_ang * dR/dW): only the ratio of the two weights changes training, so a space
# searches ``lambda_ratio`` and keeps lambda_ang where the preset (or ``fixed``, or ``--set``) puts it.
LAMBDA_RATIO = "lambda_ratio"
DERIVED_PARAMS = {LAMBDA_RATIO: PARAM_FLOAT}
# The config fields a derived parameter sets in each trial (nothing else in the space may set them).
DERIVED_TARGETS = {LAMBDA_RATIO: ("lambda_re",)}
# Config fields that must not vary beside a derived parameter: varying them would bring back the axis it
# removes (lambda_ang beside lambda_ratio is the common scale Adam ignores).
DERIVED_EXCLUDES = {LAMBDA_RATIO: ("lambda_re", "lambda_ang")}


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter: a float or int range (optionally log-scaled or stepped), or a choice list."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def describe(self) -> str:
        if self.type == PARAM_CATEGORICAL:
            return f"{self.name} in {list(self.choices)}"
        scale = " log" if self.log else ""
        step = f" step {self.step}" if self.step is not None else ""
        return f"{self.name} {self.type} [{self.low}, {self.high}]{scale}{step}"


@dataclass(frozen=True)
class SchedulerSpec:
    """Early stopping: ASHA over evaluated epochs, or none."""

    type: str
    grace_period: int = DEFAULT_GRACE_PERIOD
    reduction_factor: float = DEFAULT_REDUCTION_FACTOR


@dataclass(frozen=True)
class StudySpace:
    """A validated search space file."""

    path: Path
    name: str
    description: str
    metrics: tuple[str, ...]
    modes: tuple[str, ...]
    num_samples: int
    preset: str | None
    fixed: dict[str, Any]
    search: tuple[ParamSpec, ...]
    grid: dict[str, tuple[Any, ...]]
    scheduler: SchedulerSpec
    eval_every: int
    repeats: int = DEFAULT_REPEATS
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def kind(self) -> str:
        return KIND_SEARCH if self.search else KIND_GRID

    @property
    def metric(self) -> str:
        """The metric that picks the best trial (the first one of a multi-objective study)."""
        return self.metrics[0]

    @property
    def mode(self) -> str:
        return self.modes[0]

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    @property
    def searched(self) -> tuple[str, ...]:
        """Names of the parameters that vary between trials."""
        if self.search:
            return tuple(p.name for p in self.search)
        return tuple(self.grid)

    @property
    def set_per_trial(self) -> tuple[str, ...]:
        """The MAAEConfig fields a trial's parameters set: the varied fields, and the fields that the derived
        parameters (``lambda_ratio``) set."""
        names: list[str] = []
        for name in self.searched:
            names += DERIVED_TARGETS.get(name, (name,))
        return tuple(dict.fromkeys(names))

    @property
    def grid_size(self) -> int:
        """Number of combinations of a grid (1 for a grid with no axes)."""
        return math.prod(len(values) for values in self.grid.values())

    @property
    def total_trials(self) -> int:
        if self.kind == KIND_GRID:
            return self.grid_size * self.num_samples
        return self.num_samples

    def with_overrides(self, *, name: str | None = None, num_samples: int | None = None,
                       repeats: Any = None) -> StudySpace:
        """A copy with the command line's ``--name`` / ``--num-samples`` / ``--repeats`` applied (validated;
        ``repeats`` may be the flag's text)."""
        changes: dict[str, Any] = {}
        if name is not None:
            changes["name"] = _check_name(name, "--name")
        if num_samples is not None:
            if num_samples < 1:
                raise ConfigError(f"--num-samples: expected an integer >= 1, got {num_samples}")
            changes["num_samples"] = num_samples
        if repeats is not None:
            changes["repeats"] = _parse_repeats(repeats, "--repeats", self.path, self.search, self.grid)
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------------------------ loading ---

def load_space(path: Path | str) -> StudySpace:
    """Read and validate a space file; every problem is one ConfigError line naming file and field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: search space file does not exist (expected a YAML file, "
                          "e.g. search_spaces/ang.yaml)")
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"{path}: not valid YAML{where} ({problem})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file (expected YAML)") from None
    return parse_space(raw, path)


def parse_space(raw: Any, path: Path | str = "<space>") -> StudySpace:
    """Validate an already parsed YAML document (a mapping) as a search space."""
    path = Path(path)
    src = str(path)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{src}: expected a mapping of study settings at the top level, "
                          f"got {type(raw).__name__}")
    unknown = [key for key in raw if key not in TOP_LEVEL_KEYS]
    if unknown:
        raise ConfigError(f"{src}: unknown key {unknown[0]!r}; expected some of: {', '.join(TOP_LEVEL_KEYS)}")

    name = _check_name(raw.get("name", path.stem), f"{src}: name")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{src}: description: expected text, got {description!r}")
    metrics, modes = _parse_objectives(raw, src)
    preset_name = raw.get("preset")
    if preset_name in RENAMED_PRESETS:
        raise ConfigError(f"{src}: preset: {preset_name!r} no longer exists, its settings are now "
                          f"{RENAMED_PRESETS[preset_name]!r}; expected one of {', '.join(PRESETS)}")
    if preset_name is not None and preset_name not in PRESETS:
        raise ConfigError(f"{src}: preset: expected one of {', '.join(PRESETS)}, got {preset_name!r}")

    fixed = _parse_fixed(raw.get("fixed"), src)
    has_search = raw.get("search") is not None
    has_grid = raw.get("grid") is not None
    if has_search and has_grid:
        raise ConfigError(f"{src}: expected either 'search' or 'grid', not both")
    search = _parse_search(raw.get("search"), src) if has_search else ()
    grid = _parse_grid(raw.get("grid"), src) if has_grid else {}
    for name_ in (*[p.name for p in search], *grid):
        if name_ in fixed:
            raise ConfigError(f"{src}: fixed.{name_}: also varied by the space; expected it in one place")
    _check_derived(src, "search" if has_search else "grid", [p.name for p in search] or list(grid), fixed)
    repeats = DEFAULT_REPEATS
    if "repeats" in raw:
        repeats = _parse_repeats(raw["repeats"], f"{src}: repeats", path, search, grid)

    kind = KIND_SEARCH if search else KIND_GRID
    default_samples = DEFAULT_SEARCH_SAMPLES if kind == KIND_SEARCH else DEFAULT_GRID_REPEATS
    num_samples = _positive_int(raw.get("num_samples", default_samples), f"{src}: num_samples")
    eval_every = _parse_eval_every(raw.get("eval_every", DEFAULT_EVAL_EVERY), f"{src}: eval_every")
    scheduler = _parse_scheduler(raw.get("scheduler"), src, kind, len(metrics) > 1)
    if scheduler.type == SCHEDULER_ASHA and not (EVAL_FINAL_ONLY < eval_every <= scheduler.grace_period):
        raise ConfigError(f"{src}: eval_every: ASHA compares trials at epoch {scheduler.grace_period} "
                          f"(scheduler.grace_period) and later; expected an evaluation at least that often "
                          f"(1..{scheduler.grace_period}), got {raw.get('eval_every')!r}")
    return StudySpace(path=path, name=name, description=description, metrics=metrics, modes=modes,
                      num_samples=num_samples, preset=preset_name, fixed=fixed, search=search, grid=grid,
                      scheduler=scheduler, eval_every=eval_every, repeats=repeats, raw=dict(raw))


def _check_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise ConfigError(f"{where}: expected a name of letters, digits, '.', '_' or '-' "
                          f"(a folder name), got {value!r}")
    return value


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: expected an integer >= 1, got {value!r}")
    return value


def _parse_repeats(value: Any, where: str, path: Path, search: tuple[ParamSpec, ...],
                   grid: Mapping[str, Any]) -> int:
    """``repeats`` (a space's key, or ``--repeats``'s text): seeds per trial, never beside a seed axis."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigError(f"{where}: expected an integer >= 1 (seeds per trial), got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: expected an integer >= 1 (seeds per trial), got {value!r}")
    axis = "search" if any(p.name == SEED_COLUMN for p in search) else "grid" if SEED_COLUMN in grid else None
    if axis is not None:
        raise ConfigError(f"{where}: {path} also varies {axis}.{SEED_COLUMN}; expected one way to repeat seeds: "
                          f"repeats (seeds {SEED_COLUMN}, {SEED_COLUMN} + 1, ... inside every trial) or a "
                          f"{SEED_COLUMN} axis without repeats")
    return value


def _check_derived(src: str, block: str, varied: list[str], fixed: Mapping[str, Any]) -> None:
    """A derived parameter (``lambda_ratio``) sets its fields alone, and the fields it stands for stay put."""
    for name in varied:
        for other in DERIVED_EXCLUDES.get(name, ()):
            if other in varied:
                raise ConfigError(f"{src}: {block}.{other}: varied beside {block}.{name}, which sets "
                                  f"{', '.join(DERIVED_TARGETS[name])} (only the ratio lambda_re / lambda_ang "
                                  "matters under Adam); expected it fixed (or left at the preset's value)")
        for target in DERIVED_TARGETS.get(name, ()):
            if target in fixed:
                raise ConfigError(f"{src}: fixed.{target}: set by {block}.{name} in every trial; expected it "
                                  "in one place")


def _parse_eval_every(value: Any, where: str) -> int:
    if value == EVAL_FINAL:
        return EVAL_FINAL_ONLY
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: expected an integer >= 1 (epochs between evaluations) or "
                          f"'{EVAL_FINAL}', got {value!r}")
    return value


def _parse_objectives(raw: Mapping, src: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    metric = raw.get("metric", DEFAULT_METRIC)
    mode = raw.get("mode", DEFAULT_MODE)
    metrics = tuple(metric) if isinstance(metric, list) else (metric,)
    if not metrics:
        raise ConfigError(f"{src}: metric: expected a metric name or a non-empty list of them")
    for value in metrics:
        if value not in METRIC_NAMES:
            raise ConfigError(f"{src}: metric: unknown metric {value!r}; expected one of: "
                              f"{', '.join(METRIC_NAMES)}")
    if len(set(metrics)) != len(metrics):
        raise ConfigError(f"{src}: metric: expected distinct metrics, got {list(metrics)}")
    modes = tuple(mode) if isinstance(mode, list) else (mode,) * len(metrics)
    if len(modes) != len(metrics):
        raise ConfigError(f"{src}: mode: expected {len(metrics)} modes (one per metric), got {list(modes)}")
    for value in modes:
        if value not in MODES:
            raise ConfigError(f"{src}: mode: expected one of {', '.join(MODES)}, got {value!r}")
    return metrics, modes


def _field_type(name: str, where: str) -> str:
    if name in DERIVED_PARAMS:
        return DERIVED_PARAMS[name]
    types = {f.name: getattr(f.type, "__name__", f.type) for f in fields(MAAEConfig)}
    if name not in types:
        raise ConfigError(f"{where}: unknown hyperparameter {name!r}; expected a MAAEConfig field: "
                          f"{', '.join(sorted(types))}")
    return str(types[name])


def _coerce_value(name: str, value: Any, where: str) -> Any:
    """One value coerced to the field's type by MAAEConfig's own rules (one-line error otherwise)."""
    _field_type(name, where)
    if name in DERIVED_PARAMS:
        return _coerce_derived(name, value, where)
    try:
        return MAAEConfig.from_dict({name: value}, source=where).to_dict()[name]
    except ConfigError as err:
        # Only a problem of this very field; a clash with another field's default is judged per trial.
        if err.field is None or err.field == name:
            raise
        return _coerce_type_only(name, value, where)


def _coerce_derived(name: str, value: Any, where: str) -> float:
    """A derived parameter's value: a finite number >= 0 (``lambda_ratio`` makes lambda_re, which is >= 0)."""
    number = _number(value, where, integer=False)
    if number < 0:
        raise ConfigError(f"{where}: expected a number >= 0 ({name} = lambda_re / lambda_ang), got {value!r}")
    return float(number)


def _coerce_type_only(name: str, value: Any, where: str) -> Any:
    _field_type(name, where)
    return MAAEConfig.coerce_field(name, value, source=where)


def _parse_fixed(block: Any, src: str) -> dict[str, Any]:
    if block is None:
        return {}
    if not isinstance(block, Mapping):
        raise ConfigError(f"{src}: fixed: expected a mapping of hyperparameter: value, got {block!r}")
    for key in block:
        if key in DERIVED_PARAMS:
            raise ConfigError(f"{src}: fixed.{key}: only searched or in a grid; expected the fields it sets "
                              f"({', '.join(DERIVED_TARGETS[key])}) in fixed")
    return {str(key): _coerce_value(str(key), value, f"{src}: fixed.{key}") for key, value in block.items()}


def _parse_search(block: Any, src: str) -> tuple[ParamSpec, ...]:
    if not isinstance(block, Mapping) or not block:
        raise ConfigError(f"{src}: search: expected a non-empty mapping of hyperparameter: range, got {block!r}")
    return tuple(_parse_param(str(name), spec, f"{src}: search.{name}") for name, spec in block.items())


def _number(value: Any, where: str, integer: bool) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{where}: expected {kind}, got {value!r}")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _parse_param(name: str, spec: Any, where: str) -> ParamSpec:
    field_type = _field_type(name, where)
    if isinstance(spec, list):  # shorthand: a list of choices
        spec = {"choices": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a mapping with low/high or choices, got {spec!r}")
    unknown = [key for key in spec if key not in PARAM_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; expected some of: {', '.join(PARAM_KEYS)}")
    if field_type not in (PARAM_FLOAT, PARAM_INT) and "choices" not in spec:
        raise ConfigError(f"{where}.type: {name} is a {field_type} field; expected choices: [...] "
                          "(a categorical parameter)")
    default_type = PARAM_CATEGORICAL if "choices" in spec else field_type
    param_type = spec.get("type", default_type)
    if param_type not in PARAM_TYPES:
        raise ConfigError(f"{where}.type: expected one of {', '.join(PARAM_TYPES)}, got {param_type!r}")

    if param_type == PARAM_CATEGORICAL:
        extra = [key for key in ("low", "high", "log", "step") if key in spec]
        if extra:
            raise ConfigError(f"{where}.{extra[0]}: not allowed for a categorical parameter (use choices)")
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices: expected a non-empty list of values, got {choices!r}")
        values = tuple(_coerce_value(name, value, f"{where}.choices") for value in choices)
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{where}.choices: expected distinct values, got {list(values)}")
        return ParamSpec(name=name, type=PARAM_CATEGORICAL, choices=values)

    if field_type != param_type:
        raise ConfigError(f"{where}.type: {name} is a {field_type} field; expected type {field_type} "
                          f"or categorical, got {param_type}")
    if "choices" in spec:
        raise ConfigError(f"{where}.choices: not allowed for a {param_type} range (use type: categorical)")
    integer = param_type == PARAM_INT
    for key in ("low", "high"):
        if key not in spec:
            raise ConfigError(f"{where}.{key}: missing (a {param_type} range needs low and high)")
    low = _number(spec["low"], f"{where}.low", integer)
    high = _number(spec["high"], f"{where}.high", integer)
    if low > high:
        raise ConfigError(f"{where}.low: expected low <= high ({high}), got {low}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log: expected true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}.low: a log range needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None:
        step = _number(step, f"{where}.step", integer)
        if step <= 0:
            raise ConfigError(f"{where}.step: expected a step > 0, got {step}")
        if log and not (integer and step == 1):
            raise ConfigError(f"{where}.step: a log range takes no step (Optuna samples it continuously)")
    for key, value in (("low", low), ("high", high)):
        _coerce_value(name, value, f"{where}.{key}")
    return ParamSpec(name=name, type=param_type, low=low, high=high, log=log, step=step)


def _parse_grid(block: Any, src: str) -> dict[str, tuple[Any, ...]]:
    if not isinstance(block, Mapping):
        raise ConfigError(f"{src}: grid: expected a mapping of hyperparameter: [values], got {block!r}")
    grid: dict[str, tuple[Any, ...]] = {}
    for name, values in block.items():
        where = f"{src}: grid.{name}"
        _field_type(str(name), where)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: expected a non-empty list of values, got {values!r}")
        coerced = tuple(_coerce_value(str(name), value, where) for value in values)
        if len(set(map(repr, coerced))) != len(coerced):
            raise ConfigError(f"{where}: expected distinct values, got {list(coerced)}")
        grid[str(name)] = coerced
    return grid


def _parse_scheduler(block: Any, src: str, kind: str, multi_objective: bool) -> SchedulerSpec:
    default = SCHEDULER_ASHA if kind == KIND_SEARCH and not multi_objective else SCHEDULER_NONE
    if block is None:
        return SchedulerSpec(type=default)
    if isinstance(block, str):
        block = {"type": block}
    if not isinstance(block, Mapping):
        raise ConfigError(f"{src}: scheduler: expected 'asha', 'none' or a mapping, got {block!r}")
    unknown = [key for key in block if key not in SCHEDULER_KEYS]
    if unknown:
        raise ConfigError(f"{src}: scheduler: unknown key {unknown[0]!r}; expected some of: "
                          f"{', '.join(SCHEDULER_KEYS)}")
    sched_type = block.get("type", SCHEDULER_ASHA)
    if sched_type not in SCHEDULERS:
        raise ConfigError(f"{src}: scheduler.type: expected one of {', '.join(SCHEDULERS)}, got {sched_type!r}")
    if sched_type == SCHEDULER_ASHA and multi_objective:
        raise ConfigError(f"{src}: scheduler.type: ASHA cannot stop trials of a multi-objective study; "
                          "expected none")
    grace = _positive_int(block.get("grace_period", DEFAULT_GRACE_PERIOD), f"{src}: scheduler.grace_period")
    factor = block.get("reduction_factor", DEFAULT_REDUCTION_FACTOR)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 1:
        raise ConfigError(f"{src}: scheduler.reduction_factor: expected a number > 1, got {factor!r}")
    return SchedulerSpec(type=sched_type, grace_period=grace, reduction_factor=float(factor))


# ------------------------------------------------------------------------------------------ configs ---

def base_config(space: StudySpace, *, preset_name: str | None = None,
                overrides: Mapping[str, Any] | None = None) -> MAAEConfig:
    """The configuration every trial starts from: preset, then the space's ``fixed``, then ``overrides``.

    ``preset_name`` (the command line's ``--preset``) wins over the space's ``preset``; ``overrides`` are the
    command line's ``--set`` and ``--epochs``. A searched parameter cannot be overridden.
    """
    overrides = dict(overrides or {})
    for name in overrides:
        if name in space.searched or name in space.set_per_trial:
            raise ConfigError(f"--set {name}: {name} is varied by {space.path}; expected a field it does "
                              "not search")
    config = preset(study_preset(space, preset_name)).replace(f"{space.path}: fixed", **space.fixed)
    return config.replace("--set", **overrides) if overrides else config


def study_preset(space: StudySpace, preset_name: str | None) -> str:
    return preset_name or space.preset or DEFAULT_PRESET


def trial_config(base: MAAEConfig, params: Mapping[str, Any]) -> MAAEConfig:
    """The configuration of one trial: ``base`` with the trial's sampled ``params`` (validated together).

    Only :meth:`MAAEConfig.replace` merges; this names the source its error messages show. A derived
    parameter becomes the fields it sets: ``lambda_ratio`` gives ``lambda_re = lambda_ratio * lambda_ang``.
    """
    return base.replace(TRIAL_SOURCE, **resolve_params(base, params))


def resolve_params(base: MAAEConfig, params: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's parameters as MAAEConfig fields: every derived parameter replaced by the fields it sets."""
    resolved = {name: value for name, value in params.items() if name not in DERIVED_PARAMS}
    if LAMBDA_RATIO in params:
        lambda_ang = MAAEConfig.coerce_field("lambda_ang", resolved.get("lambda_ang", base.lambda_ang),
                                             source=TRIAL_SOURCE)
        ratio = MAAEConfig.coerce_field("lambda_re", params[LAMBDA_RATIO], source=TRIAL_SOURCE)
        resolved["lambda_re"] = ratio * lambda_ang
    return resolved


def hyperparameter_values(base: MAAEConfig, columns: Sequence[str], params: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's values of the ``trials.csv`` hyperparameter ``columns``: a derived parameter as sampled, every
    field as the trial's configuration has it (after the merge)."""
    config = trial_config(base, params)
    return {name: params.get(name) if name in DERIVED_PARAMS else getattr(config, name) for name in columns}


def check_against_base(space: StudySpace, base: MAAEConfig) -> None:
    """Each end of each range and each choice must be a valid value on top of ``base``.

    Catches a value that no trial could run with (``dilation: 0``) before any trial starts. A value that is
    only invalid together with another searched value (``residual_every`` above a sampled ``depth``) is
    reported per trial, as a failed trial.
    """
    if LAMBDA_RATIO in space.searched and base.lambda_ang <= 0:
        block = "search" if space.search else "grid"
        raise ConfigError(f"{space.path}: {block}.{LAMBDA_RATIO}: lambda_re = {LAMBDA_RATIO} * lambda_ang needs "
                          f"lambda_ang > 0 (set in fixed or --set), got {base.lambda_ang}")
    candidates: list[tuple[str, Any, str]] = []
    for param in space.search:
        where = f"{space.path}: search.{param.name}"
        if param.type == PARAM_CATEGORICAL:
            candidates += [(param.name, value, f"{where}.choices") for value in param.choices]
        else:
            candidates += [(param.name, param.low, f"{where}.low"), (param.name, param.high, f"{where}.high")]
    for name, values in space.grid.items():
        candidates += [(name, value, f"{space.path}: grid.{name}") for value in values]
    searched = set(space.searched)
    for name, value, where in candidates:
        try:
            trial_config(base, {name: value})
        except ConfigError as err:
            other = err.field
            if other is None or other == name or other not in searched:
                detail = str(err).split(": ", 1)[-1]
                raise ConfigError(f"{where}: {value!r} is not a valid value ({detail})") from None


def study_overrides(space: StudySpace, cli_overrides: Mapping[str, Any], base: MAAEConfig) -> dict[str, Any]:
    """The hyperparameters fixed for this study, by name, with their final (coerced) values."""
    names = list(space.fixed) + [n for n in cli_overrides if n not in space.fixed]
    return {name: getattr(base, name) for name in names}


def hyperparameter_columns(space: StudySpace, fixed: Mapping[str, Any]) -> list[str]:
    """The hyperparameter columns of ``trials.csv``: searched, the fields derived parameters set (``lambda_re``
    beside ``lambda_ratio``), then fixed, then ``seed`` (always: the trial's first seed)."""
    columns = list(dict.fromkeys([*space.searched, *space.set_per_trial]))
    columns += [name for name in fixed if name not in columns]
    if SEED_COLUMN not in columns:
        columns.append(SEED_COLUMN)
    return columns


def feature_variants(space: StudySpace, base: MAAEConfig) -> list[MAAEConfig]:
    """One config per distinct frozen-backbone feature set the study will read (to warm the cache once).

    Features depend on the backbone, its weights and the image size. Varied as choices or grid values they
    are all warmed; varied as a numeric range they are computed by the first trial that needs them.
    """
    axes: dict[str, tuple[Any, ...]] = {}
    for param in space.search:
        if param.name in FEATURE_FIELDS and param.type == PARAM_CATEGORICAL:
            axes[param.name] = param.choices
    for name, values in space.grid.items():
        if name in FEATURE_FIELDS:
            axes[name] = values
    variants = []
    names = list(axes)
    for combination in itertools.product(*(axes[n] for n in names)) if names else [()]:
        try:
            variants.append(base.replace(**dict(zip(names, combination, strict=True))))
        except ConfigError:
            continue
    return variants


# ------------------------------------------------------------------------------------- translation ---

def optuna_distributions(space: StudySpace) -> dict[str, Any]:
    """The searched parameters as Optuna distributions (for ``OptunaSearch(space=...)``)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    distributions: dict[str, Any] = {}
    for param in space.search:
        if param.type == PARAM_CATEGORICAL:
            distributions[param.name] = CategoricalDistribution(list(param.choices))
        elif param.type == PARAM_INT:
            distributions[param.name] = IntDistribution(int(param.low), int(param.high), log=param.log,
                                                        step=int(param.step or 1))
        else:
            distributions[param.name] = FloatDistribution(float(param.low), float(param.high), log=param.log,
                                                          step=param.step)
    return distributions


def stated_distributions(space: StudySpace) -> dict[str, Any]:
    """Every parameter the space varies as an Optuna distribution: the search's ranges and choices
    (:func:`optuna_distributions`), or each grid axis as a categorical over its values.

    The report rebuilds an Optuna study from a finished study's ``trials.csv`` with these.
    """
    if space.kind == KIND_SEARCH:
        return optuna_distributions(space)
    from optuna.distributions import CategoricalDistribution

    return {name: CategoricalDistribution(list(values)) for name, values in space.grid.items()}


def grid_param_space(space: StudySpace) -> dict[str, Any]:
    """The grid as Tune ``grid_search`` entries (every combination is one trial)."""
    from ray import tune

    return {name: tune.grid_search(list(values)) for name, values in space.grid.items()}


def grid_combinations(space: StudySpace) -> list[dict[str, Any]]:
    """Every combination of the grid, in Tune's order (the last axis varies slowest)."""
    names = list(space.grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*space.grid.values())]


def summary(space: StudySpace) -> str:
    """Two or three lines that say what the study varies and how it is judged."""
    objective = ", ".join(f"{m} ({o})" for m, o in zip(space.metrics, space.modes, strict=True))
    if space.kind == KIND_SEARCH:
        varied = "; ".join(p.describe() for p in space.search)
        how = f"{space.num_samples} trials, Optuna TPE" + (
            f", ASHA (grace {space.scheduler.grace_period})" if space.scheduler.type == SCHEDULER_ASHA else "")
    else:
        varied = "; ".join(f"{n} in {list(v)}" for n, v in space.grid.items()) or "nothing (one trial)"
        repeats = f" x {space.num_samples}" if space.num_samples > 1 else ""
        how = f"grid of {space.grid_size}{repeats} = {space.total_trials} trials"
    if space.repeats > 1:
        how += f", {space.repeats} seeds per trial (metrics are their means)"
    return f"study {space.name}: {how}; objective {objective}\n  varies: {varied}"


def as_plain(values: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-friendly copy (tuples become lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}


__all__ = [
    "KIND_GRID",
    "KIND_SEARCH",
    "ParamSpec",
    "SchedulerSpec",
    "StudySpace",
    "as_plain",
    "base_config",
    "check_against_base",
    "feature_variants",
    "grid_combinations",
    "grid_param_space",
    "hyperparameter_columns",
    "hyperparameter_values",
    "load_space",
    "optuna_distributions",
    "parse_space",
    "resolve_params",
    "stated_distributions",
    "study_overrides",
    "study_preset",
    "summary",
    "trial_config",
]
