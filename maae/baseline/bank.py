"""The fitted memory bank and the test images' nearest-neighbour distances, cached next to the features.

One bank holds the patch descriptors of every training image of every category (the unified setting),
subsampled by the greedy coreset when it exceeds ``coreset_max_patches``. It depends on the training images
(paths, sizes, modification times), the backbone's weights, the image size and the bank settings of
:class:`~maae.baseline.config.BaselineConfig`; its cache key digests all of them, so any change fits anew.

Layout, in the feature cache's folder (``$MAAE_FEATURE_CACHE`` or ``~/.cache/maae-study/features``)::

    patch-baseline/<bank key>/manifest.json       written last: marks a complete entry
    patch-baseline/<bank key>/memory_bank.npy     M x C float32
    patch-baseline/<bank key>/distances/<test key>.npy   n x h x w float32, per category's test set

The habits are :mod:`maae.features`': a file lock so two processes never fit the same bank at once, a
staging folder published with one atomic rename, and a manifest whose presence means "complete". The test
distances are the expensive part of an evaluation (Q x M distances); they are cached too, so a second
evaluation (another study's report) only upsamples, smooths and scores.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maae.baseline.config import BaselineConfig
from maae.baseline.coreset import greedy_coreset
from maae.baseline.patches import flatten_patches, iter_descriptors
from maae.baseline.search import nearest_distances
from maae.features import StageFeatures, cache_key, file_lock
from maae.io import write_bytes_atomic

# Part of every key: raise it when the descriptors, the coreset or the search change, so old entries are not read.
BANK_FORMAT_VERSION = 1
BANK_FOLDER = "patch-baseline"
BANK_FILE = "memory_bank.npy"
MANIFEST = "manifest.json"
DISTANCES_FOLDER = "distances"
ProgressFn = Callable[[str], None]


@dataclass
class MemoryBank:
    """The bank's patches (M x C float32, on the device it will be searched on) and where it came from.

    ``fitted`` is True when this call computed the bank and False when it was read from the cache (tests
    and progress messages use it); ``path`` is the cache entry, or None when the cache is off.
    """

    patches: torch.Tensor
    source_patches: int
    key: str
    path: Path | None
    fitted: bool
    fit_seconds: float

    @property
    def coreset_used(self) -> bool:
        return self.patches.shape[0] < self.source_patches


def bank_key(train_samples: Sequence, backbone_fingerprint: str, image_size: int, config: BaselineConfig) -> str:
    """A digest of the training images, backbone, image size and bank settings."""
    features_key = cache_key(train_samples, backbone_fingerprint, image_size)
    settings = json.dumps(config.bank_settings(), sort_keys=True)
    return hashlib.sha256(f"bank-v{BANK_FORMAT_VERSION}|{features_key}|{settings}".encode()).hexdigest()[:24]


def fit_memory_bank(
    train: Sequence[StageFeatures], config: BaselineConfig, *, batch_size: int, device: torch.device,
    progress: ProgressFn | None = None,
) -> tuple[torch.Tensor, int]:
    """(bank patches, number of patches before the coreset) from the training features of all categories."""
    parts = [flatten_patches(descriptors)
             for features in train
             for descriptors in iter_descriptors(features, config, batch_size=batch_size, device=device)]
    patches = torch.cat(parts, dim=0)
    source = patches.shape[0]
    if source > config.coreset_max_patches:
        if progress:
            # One pass over the whole bank per chosen patch: on a CPU this can take hours, so say so first.
            progress(f"baseline memory bank: choosing {config.coreset_max_patches:,} of {source:,} patches by "
                     f"greedy coreset on {device} (one pass over the bank per chosen patch; lower "
                     f"coreset_max_patches, or raise it to keep the bank whole, if this is too slow)")
        selection = greedy_coreset(patches, config.coreset_max_patches, projection_dim=config.projection_dim,
                                   seed=config.seed)
        patches = patches[selection.indices]
    return patches.contiguous(), source


def load_or_fit_bank(
    train: Sequence[StageFeatures], config: BaselineConfig, *, key: str, cache_root: Path | None,
    batch_size: int, device: torch.device, progress: ProgressFn | None = None,
) -> MemoryBank:
    """The memory bank: read from ``cache_root/<key>`` when complete, else fitted (and cached if a root)."""
    if cache_root is None:
        started = time.perf_counter()
        patches, source = fit_memory_bank(train, config, batch_size=batch_size, device=device, progress=progress)
        return MemoryBank(patches, source, key, None, True, time.perf_counter() - started)
    entry = Path(cache_root) / key
    fitted, seconds = False, 0.0
    if not _complete(entry):
        entry.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(entry.with_suffix(".lock")):
            if not _complete(entry):  # another process may have fitted it while we waited
                started = time.perf_counter()
                patches, source = fit_memory_bank(train, config, batch_size=batch_size, device=device,
                                                  progress=progress)
                _publish(entry, patches, source, config)
                fitted, seconds = True, time.perf_counter() - started
                if progress:
                    progress(f"baseline memory bank: {patches.shape[0]} patches (from {source}) fitted in "
                             f"{seconds:.1f}s -> {entry}")
    manifest = json.loads((entry / MANIFEST).read_text())
    patches = torch.from_numpy(np.load(entry / BANK_FILE)).to(device)
    if not fitted and progress:
        progress(f"baseline memory bank: {patches.shape[0]} patches read from {entry}")
    return MemoryBank(patches, int(manifest["source_patches"]), key, entry, fitted, seconds)


def patch_distance_maps(
    bank: MemoryBank, test: StageFeatures, config: BaselineConfig, *, test_key: str, batch_size: int,
    device: torch.device, progress: ProgressFn | None = None, label: str = "",
) -> np.ndarray:
    """n x h x w distances of every test patch to its nearest bank patch (cached in the bank's entry)."""
    cached = bank.path / DISTANCES_FOLDER / f"{test_key}.npy" if bank.path is not None else None
    if cached is not None and cached.is_file():
        return np.load(cached)
    started = time.perf_counter()
    maps = []
    for descriptors in iter_descriptors(test, config, batch_size=batch_size, device=device):
        count, _, height, width = descriptors.shape
        nearest = nearest_distances(flatten_patches(descriptors), bank.patches,
                                    block_elements=config.search_block_elements)
        maps.append(nearest.reshape(count, height, width).cpu().numpy())
    distances = np.concatenate(maps, axis=0).astype(np.float32)
    if cached is not None:
        buffer = io.BytesIO()
        np.save(buffer, distances)
        write_bytes_atomic(cached, buffer.getvalue())
    if progress:
        progress(f"baseline distances {label}: {distances.size} patches x {bank.patches.shape[0]} in "
                 f"{time.perf_counter() - started:.1f}s")
    return distances


def _complete(entry: Path) -> bool:
    return (entry / MANIFEST).is_file()


def _publish(entry: Path, patches: torch.Tensor, source: int, config: BaselineConfig) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        np.save(staging / BANK_FILE, patches.float().cpu().numpy())
        manifest = {"format_version": BANK_FORMAT_VERSION, "patches": int(patches.shape[0]),
                    "channels": int(patches.shape[1]), "source_patches": int(source),
                    "settings": config.bank_settings()}
        # The manifest is written last: its presence marks a complete entry.
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(staging, entry)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
