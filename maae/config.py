"""The one configuration object of MAAE, its presets, and its validation.

Every tunable number of the model and its training lives here, with the paper's value as the default where
the paper gives one (section 3.1 of the paper). The config is validated once, where it enters the program
(command line, search space, checkpoint), and is read-only afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from typing import Any

from maae.errors import ConfigError

ATTENTION_KINDS = ("mixed", "spatial")
# ang: the paper's ANG with W normalised (see maae.model.noise); ang_literal: the formula as printed (W raw,
# penalty lambda_re * ||W||_F); fixed: ANG with W frozen at uniform (plain Gaussian noise, no adversary);
# dropout: dropout on the auto encoder's input (Dinomaly's noisy bottleneck); jitter: UniAD's feature jitter.
NOISE_KINDS = ("ang", "ang_literal", "fixed", "dropout", "jitter", "none")
ANG_NOISE_KINDS = ("ang", "ang_literal", "fixed")
LOSS_KINDS = ("mse", "cosine")
IMAGE_SCORES = ("max", "topk_mean")
# Strides of the backbone stages a token grid can sit on (stages 3 and 4 of a timm features_only model).
TOKEN_STRIDES = (8, 16)
PARADIGMS = ("unified", "separate")
LR_SCHEDULES = ("constant", "cosine")
PRESETS = ("sweep", "quick", "highres", "paper")
# Presets that no longer exist, and the one that now holds their settings (their names may still sit in old
# study folders and scripts; the error names the replacement instead of a bare "unknown preset").
RENAMED_PRESETS = {"standard": "quick"}


@dataclass(frozen=True)
class MAAEConfig:
    """Hyperparameters of one MAAE training run.

    Names are the user-facing ones: search spaces, ``--set key=value`` and ``config.json`` use them.
    """

    # Adaptive noise generator (paper 2.2): eps' = noise_intensity * W (.) eps, eps ~ N(0, 1).
    noise_intensity: float = 1.0
    lambda_ang: float = 0.6
    lambda_re: float = 1.0
    # Initial value of every entry of W; 1 makes the first noise a plain N(0, A^2).
    ang_init: float = 1.0
    # Mixed-attention auto encoder (paper 2.3).
    dilation: int = 4
    depth: int = 18
    residual_every: int = 3
    hidden_dim: int = 256
    num_heads: int = 8
    # Ablation switches (paper Table 3).
    use_ang: bool = True
    use_ffm: bool = True
    attention: str = "mixed"
    # Which noise generator runs when use_ang is on (NOISE_KINDS above).
    noise: str = "ang"
    # Probability of zeroing an input feature when noise is "dropout" (Dinomaly uses 0.2).
    dropout_rate: float = 0.2
    jitter_scale: float = 20.0
    jitter_prob: float = 1.0
    # Backbone and input.
    backbone: str = "tf_efficientnet_lite0"
    # Weights for the backbone: "auto" (bundled Lite0 package, else timm's hub), "hub", "bundled", or a path.
    backbone_weights: str = "auto"
    image_size: int = 256
    # Stride of the token grid: 16 (the paper: merge to the deepest stage) or 8 (the merge stops at stride 8,
    # the stride-16 stage is brought up to it bilinearly): image_size / token_stride tokens per side.
    token_stride: int = 16
    # Training (paper 3.1: Adam, lr 1e-4, batch 64).
    epochs: int = 200
    batch_size: int = 64
    lr: float = 1e-4
    # "constant" (the paper names no schedule), or "cosine": both optimisers' learning rates follow a half
    # cosine from lr down to 0 over `epochs`, stepped after every epoch.
    lr_schedule: str = "constant"
    # Epochs of linear warm-up before the schedule: epoch e < warmup_epochs runs at lr * (e + 1) /
    # (warmup_epochs + 1); a cosine schedule then decays over the remaining epochs. Applies to both optimisers.
    warmup_epochs: int = 0
    # Learning rate of ANG's W (the adversary's Adam); 0 means "the same as lr".
    ang_lr: float = 0.0
    # Exponential moving average of the auto encoder's and merge's trainable weights, updated after every
    # step and used for evaluation and deployment; 0 turns it off.
    ema_decay: float = 0.0
    weight_decay: float = 0.0
    # Global gradient-norm clipping of the auto encoder and merge (not of ANG's W, which has its own Adam).
    grad_clip: float = 1.0
    # Reconstruction loss and, with it, the anomaly map's distance: "mse" (the paper's Eq. 3, per-token L2
    # map) or "cosine" (1 - cosine similarity per token, as Dinomaly and ViTAD).
    loss: str = "mse"
    paradigm: str = "unified"
    seed: int = 0
    # Evaluation: Gaussian smoothing of the upsampled anomaly map (pixels; 0 turns it off).
    anomaly_map_sigma: float = 4.0
    # Image score from the smoothed map: "max" (paper Eq. 5) or "topk_mean", the mean of its highest
    # image_score_topk fraction of pixels (Dinomaly: the top 1%).
    image_score: str = "max"
    image_score_topk: float = 0.01
    eval_batch_size: int = 32
    # Frozen-backbone feature cache (computed once per data set, backbone and image size).
    feature_cache: bool = True
    # Calibrated verdicts (maae.calibration): this fraction of each category's normal training images, drawn
    # with a fixed seed (the same split whatever `seed`), is kept out of training; after training, the image
    # and pixel thresholds are set on it so that `target_fpr` of normal images (and of normal pixels) lie
    # above them. 0 trains on every image, as before calibration existed, and calibrates nothing. The test set
    # is never used for calibration.
    validation_fraction: float = 0.1
    target_fpr: float = 0.01

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def effective_noise(self) -> str:
        """The noise generator that actually runs: ``none`` when ``use_ang`` is off."""
        return self.noise if self.use_ang else "none"

    @property
    def effective_ang_lr(self) -> float:
        """The learning rate of ANG's W: ``ang_lr``, or ``lr`` when ``ang_lr`` is 0."""
        return self.ang_lr if self.ang_lr > 0 else self.lr

    def replace(self, source: str = "config", /, **changes: Any) -> MAAEConfig:
        """A copy with ``changes`` applied and validated (names checked like :meth:`from_dict`).

        ``source`` names where the changes came from in an error message (``--set``, a trial's parameters);
        it is positional-only, so no change can collide with it.
        """
        return MAAEConfig.from_dict({**self.to_dict(), **changes}, source=source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def coerce_field(cls, name: str, value: Any, *, source: str = "config") -> Any:
        """``value`` converted to field ``name``'s type by the rules of :meth:`from_dict`, without checking
        the value against the other fields (a search space checks each value before any config exists)."""
        known = {f.name: f for f in fields(cls)}
        if name not in known:
            raise ConfigError(
                f"{source}: unknown field {name!r}; expected one of: {', '.join(sorted(known))}", field=name
            )
        return _coerce(name, value, known[name].type, source)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> MAAEConfig:
        """Build a config from plain values, coercing each to its field's type.

        ``source`` names where the values came from (a file, ``--set``) for the error message.
        """
        known = {f.name: f for f in fields(cls)}
        coerced: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(
                    f"{source}: unknown field {key!r}; expected one of: {', '.join(sorted(known))}", field=key
                )
            coerced[key] = _coerce(key, value, known[key].type, source)
        try:
            return cls(**coerced)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}", field=err.field) from None


def preset(name: str) -> MAAEConfig:
    """The named preset.

    - ``quick``: Lite0 at 192 px (12x12 tokens), cosine decay, the bilinear merge; trains all six embedded
      categories in about 4 minutes on 2 CPU cores and beats the nearest-neighbour patch baseline there.
    - ``sweep``: the same model at 128 px (8x8 tokens), constant learning rate and the trainable FFM, for
      less than half the cost per epoch; the settings of the README's 128 px studies (``quick`` before
      2026-12-03), kept so that they stay reproducible and for searches that must be cheap.
    - ``highres``: ``quick`` at 256 px (16x16 tokens, the paper's grid); the best pixel AUROC and AUPRO measured
      on both embedded sets, at about 2.1x quick's cost per epoch (outside quick's 5-minute budget on 2 cores).
    - ``paper``: the paper's settings (EfficientNet-b4, 256 px, depth 18, 200 epochs); for GPUs.
    """
    if name == "paper":
        return MAAEConfig(
            backbone="efficientnet_b4",
            image_size=256,
            lr=1e-4,
            batch_size=64,
            lambda_ang=0.6,
            lambda_re=1.0,
            dilation=4,
            depth=18,
            residual_every=3,
            epochs=200,
        )
    if name == "quick":
        # Chosen on the embedded set made with --seed 0 (README "Levers"): a 12x12 token grid for defects under
        # 1% of the image that 8x8 tokens blur (+2.2 image / +0.7 pixel AUROC over 2 seeds, 2.3x the cost per
        # epoch); cosine decay against the constant rate's late collapses; and the bilinear merge instead of
        # the trainable FFM, which lowered pixel AUROC in every one-switch pair of the ablation.
        return dataclasses.replace(preset("sweep"), image_size=192, lr_schedule="cosine", use_ffm=False)
    if name == "highres":
        # README "The highres preset": over 3 seeds, 256 px beat 192 px on pixel AUROC (17 of 18 pairs) and AUPRO
        # on both embedded sets, and above the patch baseline's pixel AUROC on both, while image AUROC moved
        # within a point either way. A preset of its own: its epoch costs too much for quick's 5-minute budget.
        return dataclasses.replace(preset("quick"), image_size=256)
    if name == "sweep":
        # Lite0 at 128 px gives an 8x8 token grid; dilation 2 keeps the dilated conv inside that grid.
        return MAAEConfig(
            backbone="tf_efficientnet_lite0",
            image_size=128,
            hidden_dim=128,
            num_heads=4,
            depth=6,
            residual_every=3,
            dilation=2,
            batch_size=16,
            lr=1e-3,
            epochs=60,
            anomaly_map_sigma=2.0,
        )
    if name in RENAMED_PRESETS:
        raise ConfigError(f"preset: {name!r} no longer exists; its settings are now the {RENAMED_PRESETS[name]!r} "
                          f"preset (expected one of: {', '.join(PRESETS)})")
    raise ConfigError(f"preset: unknown preset {name!r}; expected one of: {', '.join(PRESETS)}")


def parse_set_arguments(pairs: list[str]) -> dict[str, Any]:
    """Parse ``--set key=value`` pairs into raw values (typed later by :meth:`MAAEConfig.from_dict`)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set: expected key=value, got {pair!r}")
        values[key.strip()] = value.strip()
    return values


# The words accepted for a boolean wherever a user writes one (``--set``, a space file, an environment
# variable, a CSV read back); every reader in the project uses these two sets.
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def _coerce(name: str, value: Any, type_name: Any, source: str) -> Any:
    type_name = getattr(type_name, "__name__", type_name)
    try:
        if type_name == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in TRUE_WORDS | FALSE_WORDS:
                return value.lower() in TRUE_WORDS
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if type_name == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return int(value)
        if type_name == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if type_name == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: field {name!r} expects {type_name}, got {value!r}", field=name) from None
    return value


def _check(condition: bool, name: str, expected: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"field {name!r} expects {expected}, got {value!r}", field=name)


def _validate(cfg: MAAEConfig) -> None:
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float):
            _check(math.isfinite(value), f.name, "a finite number", value)
    _check(cfg.noise_intensity >= 0, "noise_intensity", "a number >= 0", cfg.noise_intensity)
    _check(cfg.lambda_ang >= 0, "lambda_ang", "a number >= 0", cfg.lambda_ang)
    _check(cfg.lambda_re >= 0, "lambda_re", "a number >= 0", cfg.lambda_re)
    _check(cfg.ang_init > 0, "ang_init", "a number > 0", cfg.ang_init)
    _check(cfg.dilation >= 1, "dilation", "an integer >= 1", cfg.dilation)
    _check(cfg.depth >= 1, "depth", "an integer >= 1", cfg.depth)
    _check(
        1 <= cfg.residual_every <= cfg.depth,
        "residual_every",
        f"an integer between 1 and depth ({cfg.depth})",
        cfg.residual_every,
    )
    _check(cfg.hidden_dim >= 8, "hidden_dim", "an integer >= 8", cfg.hidden_dim)
    _check(cfg.num_heads >= 1, "num_heads", "an integer >= 1", cfg.num_heads)
    _check(
        cfg.hidden_dim % cfg.num_heads == 0,
        "num_heads",
        f"a divisor of hidden_dim ({cfg.hidden_dim})",
        cfg.num_heads,
    )
    _check(cfg.attention in ATTENTION_KINDS, "attention", f"one of {ATTENTION_KINDS}", cfg.attention)
    _check(cfg.noise in NOISE_KINDS, "noise", f"one of {NOISE_KINDS}", cfg.noise)
    _check(0 <= cfg.dropout_rate < 1, "dropout_rate", "a number in [0, 1)", cfg.dropout_rate)
    _check(cfg.jitter_scale > 0, "jitter_scale", "a number > 0", cfg.jitter_scale)
    _check(0 <= cfg.jitter_prob <= 1, "jitter_prob", "a number in [0, 1]", cfg.jitter_prob)
    _check(bool(cfg.backbone.strip()), "backbone", "a timm model name", cfg.backbone)
    _check(bool(cfg.backbone_weights.strip()), "backbone_weights", "auto, hub, bundled or a path",
           cfg.backbone_weights)
    _check(
        cfg.image_size >= 32 and cfg.image_size % 16 == 0,
        "image_size",
        "a multiple of 16 that is >= 32 (the backbone's stride-16 grid)",
        cfg.image_size,
    )
    _check(cfg.token_stride in TOKEN_STRIDES, "token_stride", f"one of {TOKEN_STRIDES}", cfg.token_stride)
    _check(cfg.epochs >= 1, "epochs", "an integer >= 1", cfg.epochs)
    _check(cfg.batch_size >= 1, "batch_size", "an integer >= 1", cfg.batch_size)
    _check(cfg.lr > 0, "lr", "a number > 0", cfg.lr)
    _check(cfg.lr_schedule in LR_SCHEDULES, "lr_schedule", f"one of {LR_SCHEDULES}", cfg.lr_schedule)
    _check(0 <= cfg.warmup_epochs < cfg.epochs, "warmup_epochs",
           f"an integer between 0 and epochs - 1 ({cfg.epochs - 1})", cfg.warmup_epochs)
    _check(cfg.ang_lr >= 0, "ang_lr", "a number >= 0 (0 means the same as lr)", cfg.ang_lr)
    _check(0 <= cfg.ema_decay < 1, "ema_decay", "a number in [0, 1) (0 turns the average off)", cfg.ema_decay)
    _check(cfg.weight_decay >= 0, "weight_decay", "a number >= 0", cfg.weight_decay)
    _check(cfg.grad_clip >= 0, "grad_clip", "a number >= 0 (0 turns clipping off)", cfg.grad_clip)
    _check(cfg.loss in LOSS_KINDS, "loss", f"one of {LOSS_KINDS}", cfg.loss)
    _check(cfg.paradigm in PARADIGMS, "paradigm", f"one of {PARADIGMS}", cfg.paradigm)
    _check(cfg.seed >= 0, "seed", "an integer >= 0", cfg.seed)
    _check(cfg.anomaly_map_sigma >= 0, "anomaly_map_sigma", "a number >= 0", cfg.anomaly_map_sigma)
    _check(cfg.image_score in IMAGE_SCORES, "image_score", f"one of {IMAGE_SCORES}", cfg.image_score)
    _check(0 < cfg.image_score_topk <= 1, "image_score_topk", "a fraction in (0, 1] of the map's pixels",
           cfg.image_score_topk)
    _check(cfg.eval_batch_size >= 1, "eval_batch_size", "an integer >= 1", cfg.eval_batch_size)
    _check(0 <= cfg.validation_fraction < 1, "validation_fraction",
           "a fraction in [0, 1) of the normal training images (0: no validation split, no calibration)",
           cfg.validation_fraction)
    _check(0 < cfg.target_fpr < 1, "target_fpr", "a false-positive rate in (0, 1)", cfg.target_fpr)


__all__ = [
    "ANG_NOISE_KINDS",
    "ATTENTION_KINDS",
    "FALSE_WORDS",
    "IMAGE_SCORES",
    "LOSS_KINDS",
    "LR_SCHEDULES",
    "MAAEConfig",
    "NOISE_KINDS",
    "PARADIGMS",
    "PRESETS",
    "RENAMED_PRESETS",
    "TOKEN_STRIDES",
    "TRUE_WORDS",
    "parse_set_arguments",
    "preset",
]
