"""A saved run ready for evaluation or prediction: its checkpoint read (:mod:`maae.run_folder`), its models built."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from maae.config import MAAEConfig
from maae.engine import UNIFIED_KEY
from maae.errors import MAAEError
from maae.model import MAAEModel, build_model
from maae.run_folder import load_checkpoint


@dataclass
class LoadedRun:
    """A trained run ready for evaluation or prediction."""

    path: Path
    config: MAAEConfig
    categories: list[str]
    stage_channels: tuple[int, ...]
    models: dict[str, MAAEModel]
    normal_reference: dict[str, dict[str, float]]
    backbone_fingerprint: str
    epoch: int

    def model_key(self, category: str | None) -> str:
        """Which model scores an image of ``category`` (the unified one, or that category's)."""
        if UNIFIED_KEY in self.models:
            return UNIFIED_KEY
        if category is None:
            if len(self.models) == 1:
                return next(iter(self.models))
            raise MAAEError(f"{self.path}: this run has one model per category; pass --category, one of: "
                            f"{', '.join(self.categories)}")
        if category not in self.models:
            raise MAAEError(f"--category: {category!r} is not in this run; expected one of: "
                            f"{', '.join(self.categories)}")
        return category


def load_run(path: Path, device: torch.device | None = None) -> LoadedRun:
    """The run in ``path`` (a run folder or its checkpoint file) with its models built, in eval mode."""
    checkpoint = load_checkpoint(path)
    models: dict[str, MAAEModel] = {}
    for key, model_state in checkpoint.model_states.items():
        model = build_model(checkpoint.config, checkpoint.stage_channels)
        model.load_state_dict(model_state)
        model.eval()
        models[key] = model.to(device) if device is not None else model
    return LoadedRun(
        path=checkpoint.path, config=checkpoint.config, categories=checkpoint.categories,
        stage_channels=checkpoint.stage_channels, models=models, normal_reference=checkpoint.normal_reference,
        backbone_fingerprint=checkpoint.backbone_fingerprint, epoch=checkpoint.epoch,
    )
