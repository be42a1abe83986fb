"""A nearest-neighbour patch baseline (PatchCore-style) on the same frozen backbone features as MAAE.

Patch descriptors are the backbone's stride-4 and stride-8 stages, each averaged over a 3x3 neighbourhood,
brought to one grid and concatenated; one memory bank holds the descriptors of every training image of
every category (unified), subsampled by a greedy k-center coreset when it exceeds ``coreset_max_patches``.
A test patch's anomaly score is its distance to the nearest bank patch; the map is upsampled and smoothed
like MAAE's and its maximum is the image score. The features come from MAAE's feature cache; the bank and
the test distances are cached beside it, so every study shows the baseline without recomputing it.

Modules: ``config`` (settings), ``patches`` (descriptors), ``coreset`` (greedy k-center), ``search``
(blockwise nearest neighbour), ``bank`` (fitting and caching), ``run`` (evaluation and the run folder).
"""

from maae.baseline.bank import MemoryBank, bank_key, fit_memory_bank, load_or_fit_bank
from maae.baseline.config import BaselineConfig, default_baseline_config, split_settings
from maae.baseline.coreset import CoresetSelection, greedy_coreset
from maae.baseline.run import BaselineResult, baseline_run, check_has_defects, run_baseline, write_baseline_run
from maae.baseline.search import nearest_distances

__all__ = [
    "BaselineConfig",
    "BaselineResult",
    "CoresetSelection",
    "MemoryBank",
    "bank_key",
    "baseline_run",
    "check_has_defects",
    "default_baseline_config",
    "fit_memory_bank",
    "greedy_coreset",
    "load_or_fit_bank",
    "nearest_distances",
    "run_baseline",
    "split_settings",
    "write_baseline_run",
]
