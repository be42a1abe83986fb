"""Settings of the nearest-neighbour patch baseline, and how ``--set key=value`` reaches them.

The baseline reads a few fields of :class:`maae.config.MAAEConfig` (the ones that decide which frozen
features it sees: backbone, weights, image size, the feature cache) and has its own frozen dataclass for
everything else. A ``--set`` key is routed to one of the two; a key that is neither, or an MAAE training
field that the baseline would ignore (``depth``, ``lr``, ...), is an error, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from maae.backbone import FEATURE_STAGES
from maae.config import MAAEConfig, parse_set_arguments, preset
from maae.errors import ConfigError

# MAAE fields the baseline reads: they choose the cached features (and the evaluation batch size).
SHARED_MAAE_FIELDS: tuple[str, ...] = ("backbone", "backbone_weights", "image_size", "eval_batch_size",
                                       "feature_cache")
# Float32 elements in one block of the distance matrix (64 MiB): bounds the memory of every search step.
DEFAULT_SEARCH_BLOCK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class BaselineConfig:
    """Settings of the patch baseline (PatchCore-style), validated on construction.

    Stage numbers index the backbone's cached stages (:data:`maae.backbone.FEATURE_STAGES`: strides 2, 4, 8
    and 16 for EfficientNets).
    """

    # Backbone stages whose features are concatenated into one patch descriptor (strides 4 and 8).
    stages: tuple[int, ...] = (1, 2)
    # The stage whose grid the patches live on; the other stages are resized to it (bilinear; antialiased
    # when shrinking). Must be one of ``stages``.
    grid_stage: int = 1
    # Side of the stride-1 average pooling applied to every stage before the resize: each patch descriptor
    # sees its neighbours (PatchCore's local aggregation). 1 turns it off.
    pool_size: int = 3
    # Largest memory bank kept; a larger one is subsampled by the greedy k-center coreset. Greedy selection
    # reads the whole bank once per chosen patch, so for one evaluation it costs more than the exact search
    # it shortens whenever it keeps more patches than the test set has: choosing 500,000 of the quick
    # preset's 829,440 patches (6 x 60 images x 48 x 48 at 192 px) would take about 3.4 hours on one CPU
    # thread (extrapolated from 250 steps in 6.1 s, timed beside another job), the whole-bank search about
    # 15 minutes. So the limit only bounds memory: the default keeps every preset's bank of the embedded set
    # whole, the paper preset's too (1,474,560 patches of 88 floats at 256 px, 519 MB; 704 MB at the limit).
    coreset_max_patches: int = 2_000_000
    # Dimension of the random projection used for the coreset's distances; skipped (exact distances) when
    # the patch descriptor has no more dimensions than this, or when 0.
    projection_dim: int = 128
    # Seed of the random projection (the selection itself is deterministic).
    seed: int = 0
    # Gaussian smoothing of the upsampled anomaly map, in pixels (0: none). Set from the preset by
    # :func:`default_baseline_config`, so it matches MAAE's maps.
    anomaly_map_sigma: float = 4.0
    # Size of one block of the nearest-neighbour search's distance matrix (float32 elements): bounds memory.
    search_block_elements: int = DEFAULT_SEARCH_BLOCK_ELEMENTS

    def __post_init__(self) -> None:
        if isinstance(self.stages, list):  # a list given directly: keep the config hashable
            object.__setattr__(self, "stages", tuple(self.stages))
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["stages"] = list(self.stages)
        return values

    def bank_settings(self) -> dict[str, Any]:
        """The settings the fitted memory bank depends on (its cache key); smoothing and block size are not."""
        return {"stages": list(self.stages), "grid_stage": self.grid_stage, "pool_size": self.pool_size,
                "coreset_max_patches": self.coreset_max_patches, "projection_dim": self.projection_dim,
                "seed": self.seed}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "baseline config") -> BaselineConfig:
        """Build from plain values (strings from ``--set`` included), each coerced to its field's type."""
        known = cls.field_names()
        coerced: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{source}: unknown baseline field {key!r}; expected one of: "
                                  f"{', '.join(known)}", field=key)
            coerced[key] = _coerce(key, value, source)
        try:
            return cls(**coerced)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}", field=err.field) from None


def default_baseline_config(
    config: MAAEConfig, changes: Mapping[str, Any] | None = None, *, source: str = "baseline config",
) -> BaselineConfig:
    """The baseline's defaults for an MAAE config (its anomaly maps smoothed like MAAE's), with ``changes``."""
    return BaselineConfig.from_dict({"anomaly_map_sigma": config.anomaly_map_sigma, **(changes or {})},
                                    source=source)


def split_settings(values: Mapping[str, Any], *, source: str = "--set") -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``key=value`` settings into (MAAE fields, baseline fields); anything else is a one-line error."""
    maae_values: dict[str, Any] = {}
    baseline_values: dict[str, Any] = {}
    baseline_fields = BaselineConfig.field_names()
    for key, value in values.items():
        if key in baseline_fields:
            baseline_values[key] = value
        elif key in SHARED_MAAE_FIELDS:
            maae_values[key] = value
        else:
            accepted = sorted((*baseline_fields, *SHARED_MAAE_FIELDS))
            what = "an MAAE training field the baseline does not use" if key in MAAEConfig.field_names() \
                else "unknown field"
            raise ConfigError(f"{source}: {what} {key!r}; the baseline accepts: {', '.join(accepted)}", field=key)
    return maae_values, baseline_values


def build_baseline_configs(preset_name: str, pairs: list[str]) -> tuple[MAAEConfig, BaselineConfig]:
    """The preset's MAAE config and the baseline's defaults for it, then every ``--set key=value`` routed to
    one of the two (:func:`split_settings`), each validated once."""
    maae_values, baseline_values = split_settings(parse_set_arguments(pairs))
    config = MAAEConfig.from_dict({**preset(preset_name).to_dict(), **maae_values}, source="--set")
    baseline = default_baseline_config(config, baseline_values, source="--set")
    return config, baseline


_INT_FIELDS = ("grid_stage", "pool_size", "coreset_max_patches", "projection_dim", "seed", "search_block_elements")


def _coerce(name: str, value: Any, source: str) -> Any:
    try:
        if name == "stages":
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(_as_int(item) for item in items)
        if name in _INT_FIELDS:
            return _as_int(value)
        if name == "anomaly_map_sigma":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
    except (TypeError, ValueError):
        expected = "comma-separated integers" if name == "stages" else \
            "a number" if name == "anomaly_map_sigma" else "an integer"
        raise ConfigError(f"{source}: field {name!r} expects {expected}, got {value!r}", field=name) from None
    return value


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError
        return int(value)
    return int(str(value).strip()) if isinstance(value, str) else int(value)


def _check(condition: bool, name: str, expected: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"field {name!r} expects {expected}, got {value!r}", field=name)


def _validate(cfg: BaselineConfig) -> None:
    stage_range = f"0..{len(FEATURE_STAGES) - 1}"
    _check(len(cfg.stages) >= 1 and len(set(cfg.stages)) == len(cfg.stages), "stages",
           f"one or more distinct stage numbers in {stage_range}", cfg.stages)
    _check(all(0 <= stage < len(FEATURE_STAGES) for stage in cfg.stages), "stages",
           f"stage numbers in {stage_range}", cfg.stages)
    _check(cfg.grid_stage in cfg.stages, "grid_stage", f"one of stages {list(cfg.stages)}", cfg.grid_stage)
    _check(cfg.pool_size >= 1 and cfg.pool_size % 2 == 1, "pool_size", "an odd integer >= 1", cfg.pool_size)
    _check(cfg.coreset_max_patches >= 1, "coreset_max_patches", "an integer >= 1", cfg.coreset_max_patches)
    _check(cfg.projection_dim >= 0, "projection_dim", "an integer >= 0 (0: no projection)", cfg.projection_dim)
    _check(cfg.seed >= 0, "seed", "an integer >= 0", cfg.seed)
    _check(math.isfinite(cfg.anomaly_map_sigma) and cfg.anomaly_map_sigma >= 0, "anomaly_map_sigma",
           "a finite number >= 0", cfg.anomaly_map_sigma)
    _check(cfg.search_block_elements >= 1, "search_block_elements", "an integer >= 1", cfg.search_block_elements)
