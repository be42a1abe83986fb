"""Frozen-backbone feature cache.

The backbone never changes during training, so its four stage outputs for a list of images are computed
once and stored on disk as half-precision memory maps, keyed by the images (paths, sizes, modification
times), the backbone's weights fingerprint and the image size: a change of any of these computes anew.
Every epoch, every run and every Ray trial on the machine (or on the cluster's shared storage) reads the
same files. Writers take a file lock and publish a finished entry with one atomic rename, so a crash never
leaves a half-written entry that looks complete, and two workers never compute the same entry at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from maae.backbone import FrozenBackbone
from maae.data import AnomalyDataset, Sample

FEATURE_CACHE_ENV = "MAAE_FEATURE_CACHE"
CACHE_FORMAT_VERSION = 1
CACHE_DTYPE = np.float16
MANIFEST = "manifest.json"
ProgressFn = Callable[[str], None]


@dataclass
class StageFeatures:
    """Backbone outputs for ``samples``: one array per stage, each n x C_i x h_i x w_i (float16 on disk)."""

    samples: list[Sample]
    stages: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(stage.shape[1] for stage in self.stages)

    def batch(self, indices: Sequence[int] | slice) -> list[torch.Tensor]:
        """The stages of the given samples as float32 tensors."""
        return [torch.from_numpy(np.asarray(stage[indices], dtype=np.float32)) for stage in self.stages]


def default_cache_dir() -> Path:
    """``$MAAE_FEATURE_CACHE`` or ``~/.cache/maae-study/features``."""
    override = os.environ.get(FEATURE_CACHE_ENV)
    return Path(override) if override else Path.home() / ".cache" / "maae-study" / "features"


def cache_key(samples: Sequence[Sample], backbone_fingerprint: str, image_size: int) -> str:
    """A digest of everything the features depend on."""
    digest = hashlib.sha256()
    digest.update(f"v{CACHE_FORMAT_VERSION}|{backbone_fingerprint}|{image_size}".encode())
    for sample in samples:
        stat = sample.image_path.stat()
        digest.update(f"|{sample.image_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]


def compute_features(
    backbone: FrozenBackbone, samples: Sequence[Sample], image_size: int, *,
    batch_size: int, device: torch.device, categories: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """Run the frozen backbone over ``samples``; float32 arrays per stage (in memory)."""
    dataset = AnomalyDataset(samples, image_size, categories or sorted({s.category for s in samples}))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    outputs: list[list[np.ndarray]] = [[] for _ in backbone.channels]
    backbone = backbone.to(device)
    with torch.no_grad():
        for batch in loader:
            for stage_index, stage in enumerate(backbone(batch["image"].to(device))):
                outputs[stage_index].append(stage.float().cpu().numpy())
    return [np.concatenate(parts, axis=0) for parts in outputs]


def load_or_compute(
    backbone: FrozenBackbone | Callable[[], FrozenBackbone], samples: Sequence[Sample], image_size: int, *,
    backbone_fingerprint: str, cache_dir: Path | None, batch_size: int, device: torch.device,
    progress: ProgressFn | None = None, label: str = "",
) -> StageFeatures:
    """Features for ``samples``: from the cache when present, else computed (and cached if ``cache_dir``).

    ``backbone`` may be a function that builds it: it is then called only when features must be computed.
    """
    samples = list(samples)
    if cache_dir is None:
        stages = compute_features(_resolve(backbone), samples, image_size, batch_size=batch_size, device=device)
        return StageFeatures(samples, [stage.astype(CACHE_DTYPE) for stage in stages])
    entry = Path(cache_dir) / cache_key(samples, backbone_fingerprint, image_size)
    if not _complete(entry):
        entry.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(entry.with_suffix(".lock")):
            if not _complete(entry):  # another process may have finished it while we waited
                started = time.perf_counter()
                stages = compute_features(_resolve(backbone), samples, image_size, batch_size=batch_size,
                                          device=device)
                _publish(entry, samples, stages, image_size, backbone_fingerprint)
                if progress:
                    progress(f"features {label}: {len(samples)} images in "
                             f"{time.perf_counter() - started:.1f}s -> {entry}")
    return _open(entry, samples)


def _resolve(backbone: FrozenBackbone | Callable[[], FrozenBackbone]) -> FrozenBackbone:
    return backbone if isinstance(backbone, FrozenBackbone) else backbone()


def _complete(entry: Path) -> bool:
    return (entry / MANIFEST).is_file()


def _publish(entry: Path, samples: Sequence[Sample], stages: Sequence[np.ndarray], image_size: int,
             backbone_fingerprint: str) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        for index, stage in enumerate(stages):
            np.save(staging / f"stage{index}.npy", stage.astype(CACHE_DTYPE))
        manifest = {
            "format_version": CACHE_FORMAT_VERSION,
            "image_size": image_size,
            "backbone_fingerprint": backbone_fingerprint,
            "num_stages": len(stages),
            "shapes": [list(stage.shape) for stage in stages],
            "images": [str(sample.image_path) for sample in samples],
        }
        # The manifest is written last: its presence marks a complete entry.
        (staging / MANIFEST).write_text(json.dumps(manifest))
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(staging, entry)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _open(entry: Path, samples: list[Sample]) -> StageFeatures:
    manifest = json.loads((entry / MANIFEST).read_text())
    stages = [np.load(entry / f"stage{index}.npy", mmap_mode="r") for index in range(manifest["num_stages"])]
    if any(stage.shape[0] != len(samples) for stage in stages):
        raise RuntimeError(f"feature cache entry {entry} does not match its key; delete it and retry")
    return StageFeatures(samples, stages)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block: one writer per cache
    entry across processes (the feature cache and the baseline's memory bank share it)."""
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
