"""Reading a saved run back: config, categories and models from ``checkpoint.pt``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from maae.config import MAAEConfig
from maae.engine import CHECKPOINT_FORMAT_VERSION, UNIFIED_KEY
from maae.errors import MAAEError
from maae.model import MAAEModel, build_model

CHECKPOINT_FILE = "checkpoint.pt"


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


def resolve_checkpoint(path: Path) -> Path:
    """A run folder or a checkpoint file -> the checkpoint file (one-line error if absent)."""
    path = Path(path)
    candidate = path / CHECKPOINT_FILE if path.is_dir() else path
    if not candidate.is_file():
        raise MAAEError(f"{candidate}: no checkpoint found (expected a run folder holding {CHECKPOINT_FILE})")
    return candidate


def load_state(path: Path) -> dict:
    """The raw checkpoint dictionary (weights-only unpickling: no code runs from the file)."""
    file = resolve_checkpoint(path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the file is not a checkpoint
        raise MAAEError(f"{file}: not a readable MAAE checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or state.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise MAAEError(f"{file}: not an MAAE checkpoint of format {CHECKPOINT_FORMAT_VERSION}")
    return state


def load_run(path: Path, device: torch.device | None = None) -> LoadedRun:
    file = resolve_checkpoint(path)
    state = load_state(file)
    config = MAAEConfig.from_dict(state["config"], source=f"{file} config")
    stage_channels = tuple(int(c) for c in state["stage_channels"])
    models: dict[str, MAAEModel] = {}
    for key, model_state in state["models"].items():
        model = build_model(config, stage_channels)
        model.load_state_dict(model_state)
        model.eval()
        models[key] = model.to(device) if device is not None else model
    return LoadedRun(
        path=file, config=config, categories=list(state["categories"]), stage_channels=stage_channels,
        models=models, normal_reference=state.get("normal_reference", {}),
        backbone_fingerprint=state.get("backbone_fingerprint", ""), epoch=int(state.get("epoch", 0)),
    )
