"""Training of MAAE: the one training step, the optimisers, and an epoch-level training session.

:func:`train_step` is the single place where a batch updates the model. The plain-Python command line and
the Ray Train worker of the study platform both call it unchanged: it takes the (possibly DDP-wrapped)
model and its optimisers as arguments, keeps no global state, and returns its metrics as plain floats.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from maae.backbone import FrozenBackbone, backbone_fingerprint, build_backbone
from maae.calibration import validation_rows
from maae.config import MAAEConfig
from maae.data import AnomalyDataset, Sample, list_samples, load_mask, resolve_categories
from maae.ema import ModelEma
from maae.features import StageFeatures, default_cache_dir, load_or_compute
from maae.model import MAAEModel, build_model
from maae.model.loss import reconstruction_loss

UNIFIED_KEY = "__unified__"
ProgressFn = Callable[[str], None]
ModelWrapper = Callable[[nn.Module], nn.Module]


class NonFiniteLossError(RuntimeError):
    """The reconstruction loss became NaN or infinite: the run cannot continue."""


@dataclass
class Optimizers:
    """Adam for the auto encoder (and FFM), a separate Adam for ANG's W (the adversary; none when W is frozen
    or there is no ANG), the learning-rate schedules of both (none when the rate is constant without warm-up),
    and the moving average of the weights that every step updates (``ema_decay``; none when off)."""

    model: torch.optim.Optimizer
    noise: torch.optim.Optimizer | None = None
    schedules: list[torch.optim.lr_scheduler.LRScheduler] = field(default_factory=list)
    ema: ModelEma | None = None

    def zero_grad(self) -> None:
        self.model.zero_grad(set_to_none=True)
        if self.noise is not None:
            self.noise.zero_grad(set_to_none=True)

    def end_epoch(self) -> None:
        """Advance the learning-rate schedules by one epoch."""
        for schedule in self.schedules:
            schedule.step()

    def state_dict(self) -> dict:
        """Optimiser and schedule states (the moving average's weights are saved with the models)."""
        state = {"model": self.model.state_dict(),
                 "noise": self.noise.state_dict() if self.noise is not None else None,
                 "schedules": [schedule.state_dict() for schedule in self.schedules]}
        if self.ema is not None:
            state["ema_updates"] = self.ema.updates
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.noise is not None and state.get("noise") is not None:
            self.noise.load_state_dict(state["noise"])
        for schedule, schedule_state in zip(self.schedules, state.get("schedules", []), strict=False):
            schedule.load_state_dict(schedule_state)
        if self.ema is not None:
            self.ema.updates = int(state["ema_updates"])


def unwrap(model: nn.Module) -> MAAEModel:
    """The MAAE inside a DistributedDataParallel (or any ``.module``) wrapper."""
    return getattr(model, "module", model)


def learning_rate_factor(epoch: int, *, schedule: str, warmup_epochs: int, epochs: int) -> float:
    """The multiple of the base learning rate used during ``epoch`` (0-based).

    Warm-up: epoch ``e < warmup_epochs`` runs at ``(e + 1) / (warmup_epochs + 1)``. Then ``constant`` keeps
    1, and ``cosine`` follows a half cosine from 1 down to 0 over the remaining epochs.
    """
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    if schedule == "cosine":
        progress = (epoch - warmup_epochs) / (epochs - warmup_epochs)
        return (1 + math.cos(math.pi * progress)) / 2
    return 1.0


def build_optimizers(model: nn.Module, config: MAAEConfig) -> Optimizers:
    """Adam for the auto encoder and merge at ``lr``; Adam for a trainable ANG W at ``ang_lr`` (default:
    ``lr``); one per-epoch schedule for both (``lr_schedule``, ``warmup_epochs``); the moving average of the
    auto encoder's and merge's weights (``ema_decay``)."""
    core = unwrap(model)
    ang = core.adaptive_noise
    noise_params = {id(p) for p in ang.parameters()} if ang is not None else set()
    model_params = [p for p in core.parameters() if id(p) not in noise_params and p.requires_grad]
    model_opt = torch.optim.Adam(model_params, lr=config.lr, weight_decay=config.weight_decay)
    noise_opt = None
    if ang is not None and ang.trainable:
        noise_opt = torch.optim.Adam(ang.parameters(), lr=config.effective_ang_lr)
    schedules: list[torch.optim.lr_scheduler.LRScheduler] = []
    if config.lr_schedule != "constant" or config.warmup_epochs > 0:
        factor = functools.partial(learning_rate_factor, schedule=config.lr_schedule,
                                   warmup_epochs=config.warmup_epochs, epochs=config.epochs)
        schedules = [torch.optim.lr_scheduler.LambdaLR(opt, factor) for opt in (model_opt, noise_opt)
                     if opt is not None]
    ema = None
    if config.ema_decay > 0:
        averaged_ids = {id(p) for p in model_params}
        averaged = [name for name, p in core.named_parameters() if id(p) in averaged_ids]
        ema = ModelEma(core, config.ema_decay, averaged)
    return Optimizers(model=model_opt, noise=noise_opt, schedules=schedules, ema=ema)


def train_step(
    model: nn.Module, optimizers: Optimizers, stages: Sequence[torch.Tensor], config: MAAEConfig,
) -> dict[str, float]:
    """One optimisation step on one batch of backbone stages; returns ``loss``, and ``noise_penalty`` and
    ``noise_spread`` with ANG, and ``grad_norm`` (before clipping) with clipping on.

    One backward pass serves both players: the auto encoder (and FFM) descend ``L_e``; ANG's W receives
    ``dL_e/dW`` too, which :meth:`AdaptiveNoiseGenerator.adversarial_gradient` turns into the gradient of
    ``L_ANG = -lambda_ang L_e + lambda_re R(W)`` before its own optimiser steps. ``R(W)`` (reported as
    ``noise_penalty``) is :meth:`AdaptiveNoiseGenerator.regulariser`: ``mean((W_hat - 1)^2)`` with
    ``W_hat = W / rms(W)``, the normalised weights' mean squared distance from uniform noise (not the paper's
    ``||W||_2``, which only ``noise=ang_literal`` uses).
    """
    core = unwrap(model)
    model.train()
    optimizers.zero_grad()
    output = model(stages)
    loss = reconstruction_loss(output.reconstruction, output.target, config.loss)
    locally_finite, everywhere_finite = _finite_on_all_ranks(loss)
    if not everywhere_finite:
        where = f"is {loss.item()}" if not locally_finite else "is not finite on another rank"
        raise NonFiniteLossError(f"reconstruction loss {where} (lr={config.lr}, "
                                 f"noise_intensity={config.noise_intensity})")
    loss.backward()
    ang = core.adaptive_noise
    if ang is not None:
        ang.adversarial_gradient(config.lambda_ang, config.lambda_re)
    grad_norm = None
    if config.grad_clip > 0:
        # The auto encoder's and merge's parameters only: W has its own Adam, unclipped.
        params = [p for group in optimizers.model.param_groups for p in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    optimizers.model.step()
    if optimizers.noise is not None:
        optimizers.noise.step()
    if optimizers.ema is not None:
        optimizers.ema.update(core)
    metrics = {"loss": float(loss.detach())}
    if grad_norm is not None:
        metrics["grad_norm"] = float(grad_norm)
    if ang is not None:
        with torch.no_grad():
            metrics["noise_penalty"] = float(ang.regulariser())
            metrics["noise_spread"] = float(ang.spread())
    return metrics


def distributed_world_size() -> int:
    """The number of ranks of the initialised process group, or 1 without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def _finite_on_all_ranks(loss: torch.Tensor) -> tuple[bool, bool]:
    """(this rank's loss is finite, every rank's is).

    Under DDP a rank that stopped on a NaN would leave the others blocked in the gradient all-reduce until
    the process-group timeout; agreeing first lets every rank raise at the same step.
    """
    finite = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    local = bool(finite.item())
    if distributed_world_size() == 1:
        return local, local
    torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return local, bool(finite.item())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------------------------- data ---

@dataclass
class CategoryData:
    """One category's training source and test set (features, labels, masks).

    ``train_samples`` (and ``train_features``) are every normal training image on disk; the ones at
    ``validation_rows`` are held out of training for calibration (:mod:`maae.calibration`), the others
    (``fit_rows``) are trained on.
    """

    category: str
    train_samples: list[Sample]
    test: StageFeatures
    train_features: StageFeatures | None = None  # None when the feature cache is off
    validation_rows: tuple[int, ...] = ()
    _masks: np.ndarray | None = field(default=None, repr=False)

    @property
    def fit_rows(self) -> list[int]:
        """Positions in ``train_samples`` of the images trained on (all of them without a validation split)."""
        held = set(self.validation_rows)
        return [row for row in range(len(self.train_samples)) if row not in held]

    @property
    def validation_samples(self) -> list[Sample]:
        return [self.train_samples[row] for row in self.validation_rows]

    def masks(self, image_size: int) -> np.ndarray:
        if self._masks is None:
            self._masks = np.stack([load_mask(s.mask_path, image_size) for s in self.test.samples])
        return self._masks

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.test.samples], dtype=np.int64)


class LazyBackbone:
    """The frozen backbone, built on first use: when every feature comes from the cache (every epoch of a
    cached run, every trial of a study after the first), no backbone is ever built."""

    def __init__(self, name: str, weights: str, device: torch.device) -> None:
        self.name, self.weights, self.device = name, weights, device
        self._backbone: FrozenBackbone | None = None

    @property
    def built(self) -> bool:
        return self._backbone is not None

    def __call__(self) -> FrozenBackbone:
        if self._backbone is None:
            self._backbone = build_backbone(self.name, self.weights).to(self.device)
        return self._backbone


@dataclass
class PreparedData:
    """Everything a training session reads: per-category features and the backbone that made them."""

    root: Path
    categories: list[str]
    stage_channels: tuple[int, ...]
    per_category: dict[str, CategoryData]
    backbone_source: LazyBackbone
    backbone_fingerprint: str

    @property
    def backbone(self) -> FrozenBackbone:
        """The frozen backbone (built now if no feature needed it yet)."""
        return self.backbone_source()


def prepare_data(
    config: MAAEConfig, root: Path, categories: Sequence[str] | None, *, device: torch.device,
    cache_dir: Path | None = None, progress: ProgressFn | None = None, need_train: bool = True,
) -> PreparedData:
    """Resolve categories and load (or compute and cache) the features; the backbone is built only if a
    feature must be computed."""
    root = Path(root)
    chosen = resolve_categories(root, categories)
    backbone = LazyBackbone(config.backbone, config.backbone_weights, device)
    fingerprint = backbone_fingerprint(config.backbone, config.backbone_weights)
    use_cache = (cache_dir if cache_dir is not None else default_cache_dir()) if config.feature_cache else None
    per_category: dict[str, CategoryData] = {}
    for category in chosen:
        common = dict(image_size=config.image_size, backbone_fingerprint=fingerprint, cache_dir=use_cache,
                      batch_size=config.eval_batch_size, device=device, progress=progress)
        train_samples = list_samples(root, category, "train") if need_train else []
        test = load_or_compute(backbone, list_samples(root, category, "test"), label=f"{category}/test",
                               **common)
        train = None
        if need_train and config.feature_cache:
            train = load_or_compute(backbone, train_samples, label=f"{category}/train", **common)
        held_out = validation_rows(len(train_samples), config.validation_fraction,
                                   category=category) if need_train else ()
        per_category[category] = CategoryData(category, train_samples, test, train, held_out)
    stage_channels = per_category[chosen[0]].test.channels
    return PreparedData(root, chosen, stage_channels, per_category, backbone, fingerprint)


class _CachedStages(Dataset):
    """Training items from cached features: item i is the list of its stage tensors.

    ``blocks`` pairs each category's features with the rows to train on (indexing the memory maps row by
    row, so a validation split copies nothing).
    """

    def __init__(self, blocks: Sequence[tuple[StageFeatures, Sequence[int]]]) -> None:
        self.blocks = [block for block, _ in blocks]
        self.index = [(b, i) for b, (_, rows) in enumerate(blocks) for i in rows]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> list[torch.Tensor]:
        block, row = self.index[item]
        return [torch.from_numpy(np.asarray(stage[row], dtype=np.float32)) for stage in self.blocks[block].stages]


class _LiveImages(Dataset):
    """Training items as images, for runs without the feature cache (backbone recomputed every step)."""

    def __init__(self, samples: Sequence[Sample], image_size: int, categories: Sequence[str]) -> None:
        self.images = AnomalyDataset(samples, image_size, categories)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int) -> torch.Tensor:
        return self.images[item]["image"]


# ------------------------------------------------------------------------------------------ session ---

@dataclass
class EpochStats:
    """One epoch's means over its steps (``noise_spread``: the value after its last step), for every model.

    ``noise_penalty`` is ANG's R(W) and ``noise_spread`` the standard deviation of W's normalised entries (0
    for uniform noise): how far the adversary has moved W. ``grad_norm`` is the auto encoder's gradient norm
    before clipping (compare with ``grad_clip`` to see how often clipping acts). None when not applicable.
    """

    epoch: int
    loss: float
    images: int
    seconds: float
    noise_penalty: float | None = None
    noise_spread: float | None = None
    grad_norm: float | None = None

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else math.nan


class TrainingSession:
    """The models (one unified, or one per category), their optimisers, and their training data.

    ``wrap_model`` lets a distributed launcher wrap each model (e.g. in DDP) without this module knowing
    about the launcher. When ``torch.distributed`` is initialised, each rank trains on its own shard.
    """

    def __init__(
        self, config: MAAEConfig, data: PreparedData, *, device: torch.device,
        wrap_model: ModelWrapper | None = None,
    ) -> None:
        self.config = config
        self.data = data
        self.device = device
        self.epoch = 0
        seed_everything(config.seed)
        keys = [UNIFIED_KEY] if config.paradigm == "unified" else list(data.categories)
        self.models: dict[str, nn.Module] = {}
        self.optimizers: dict[str, Optimizers] = {}
        self.loaders: dict[str, DataLoader] = {}
        for key in keys:
            model: nn.Module = build_model(config, data.stage_channels).to(device)
            if wrap_model is not None:
                model = wrap_model(model)
            self.models[key] = model
            self.optimizers[key] = build_optimizers(model, config)
            categories = data.categories if key == UNIFIED_KEY else [key]
            self.loaders[key] = self._loader(categories)

    def _loader(self, categories: Sequence[str]) -> DataLoader:
        config = self.config
        per_category = [self.data.per_category[c] for c in categories]
        if config.feature_cache:
            dataset: Dataset = _CachedStages([(cat.train_features, cat.fit_rows) for cat in per_category])
        else:
            samples = [cat.train_samples[row] for cat in per_category for row in cat.fit_rows]
            dataset = _LiveImages(samples, config.image_size, self.data.categories)
        if len(dataset) == 0:
            raise ValueError(f"no training images for categories {list(categories)}")
        # One rank (plain Python, or a one-worker Ray trial, where Train still initialises a process group)
        # shuffles exactly as `python -m maae train` does, so both give the same run.
        if distributed_world_size() > 1:
            sampler: DistributedSampler | RandomSampler = DistributedSampler(dataset, shuffle=True, seed=config.seed)
        else:
            generator = torch.Generator().manual_seed(config.seed)
            sampler = RandomSampler(dataset, generator=generator)
        batch_size = min(config.batch_size, len(dataset))
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True)

    def core_model(self, key: str) -> MAAEModel:
        return unwrap(self.models[key])

    def model_for(self, category: str) -> MAAEModel:
        return self.core_model(UNIFIED_KEY if UNIFIED_KEY in self.models else category)

    def train_epoch(self) -> EpochStats:
        """One pass over every model's training data; returns mean loss and throughput."""
        started = time.perf_counter()
        losses: list[float] = []
        noise_penalties: list[float] = []
        grad_norms: list[float] = []
        final_spreads: list[float] = []
        images = 0
        for key, loader in self.loaders.items():
            if isinstance(loader.sampler, DistributedSampler):
                loader.sampler.set_epoch(self.epoch)
            metrics: dict[str, float] = {}
            for batch in loader:
                stages = self._stages(batch)
                metrics = train_step(self.models[key], self.optimizers[key], stages, self.config)
                losses.append(metrics["loss"])
                if "noise_penalty" in metrics:
                    noise_penalties.append(metrics["noise_penalty"])
                if "grad_norm" in metrics:
                    grad_norms.append(metrics["grad_norm"])
                images += stages[0].shape[0]
            if "noise_spread" in metrics:
                final_spreads.append(metrics["noise_spread"])
            self.optimizers[key].end_epoch()
        self.epoch += 1
        return EpochStats(
            epoch=self.epoch, loss=float(np.mean(losses)), images=images,
            seconds=time.perf_counter() - started,
            noise_penalty=_mean_or_none(noise_penalties), noise_spread=_mean_or_none(final_spreads),
            grad_norm=_mean_or_none(grad_norms),
        )

    def evaluation_models(self) -> dict[str, MAAEModel]:
        """The models to evaluate and deploy, by key: the moving averages when ``ema_decay`` is on, else the
        trained models themselves."""
        return {key: self._evaluation_model(key) for key in self.models}

    def _evaluation_model(self, key: str) -> MAAEModel:
        ema = self.optimizers[key].ema
        return ema.module if ema is not None else self.core_model(key)

    def _stages(self, batch: list[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
        if isinstance(batch, torch.Tensor):  # images: run the frozen backbone now
            with torch.no_grad():
                return [s.float() for s in self.data.backbone(batch.to(self.device))]
        return [stage.to(self.device, non_blocking=True) for stage in batch]

    def state_dict(self) -> dict:
        """Everything needed to resume or to deploy (readable with ``torch.load(weights_only=True)``).

        ``models`` holds the weights to deploy (:meth:`evaluation_models`); with a moving average on, the
        trained weights it averages are under ``training_models``, so a resumed run continues both.
        """
        state = {
            "config": self.config.to_dict(),
            "categories": list(self.data.categories),
            "stage_channels": list(self.data.stage_channels),
            "backbone_fingerprint": self.data.backbone_fingerprint,
            "epoch": self.epoch,
            "models": {key: model.state_dict() for key, model in self.evaluation_models().items()},
            "optimizers": {key: opt.state_dict() for key, opt in self.optimizers.items()},
            "random_state": self._random_state(),
        }
        if self.config.ema_decay > 0:
            state["training_models"] = {key: self.core_model(key).state_dict() for key in self.models}
        return state

    def _shuffle_generators(self) -> dict[str, torch.Generator]:
        """Each loader's shuffling generator (a DistributedSampler has none: it reshuffles from the epoch)."""
        generators = {key: getattr(loader.sampler, "generator", None) for key, loader in self.loaders.items()}
        return {key: generator for key, generator in generators.items() if generator is not None}

    def _random_state(self) -> dict:
        """The generators a resumed run must continue from to repeat an uninterrupted one: torch's (the
        noise of ANG and of feature jitter) and each loader's shuffling generator."""
        state: dict = {"torch": torch.get_rng_state(),
                       "loaders": {key: g.get_state() for key, g in self._shuffle_generators().items()}}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _restore_random_state(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        if "cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)
        generators = self._shuffle_generators()
        for key, generator_state in state.get("loaders", {}).items():
            if key in generators:
                generators[key].set_state(generator_state)

    def load_state_dict(self, state: dict) -> None:
        for key, model_state in state.get("training_models", state["models"]).items():
            self.core_model(key).load_state_dict(model_state)
        for key, model_state in state["models"].items():
            ema = self.optimizers[key].ema
            if ema is not None:
                ema.module.load_state_dict(model_state)
        for key, opt_state in state.get("optimizers", {}).items():
            self.optimizers[key].load_state_dict(opt_state)
        if "random_state" in state:  # absent from checkpoints written before it was saved
            self._restore_random_state(state["random_state"])
        self.epoch = int(state["epoch"])


def _mean_or_none(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None

