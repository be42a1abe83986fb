"""Heatmap overlays: the picture a user looks at when a model flags an image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Colour stops of a perceptually ordered dark-blue -> cyan -> yellow -> red ramp.
_HEAT_STOPS = np.array([
    [0.0, 0.05, 0.05, 0.35],
    [0.35, 0.0, 0.65, 0.85],
    [0.65, 0.95, 0.9, 0.1],
    [1.0, 0.85, 0.05, 0.05],
], dtype=np.float32)
OVERLAY_ALPHA = 0.5


def heat_colors(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (H x W) to RGB colours (H x W x 3, float in [0, 1])."""
    clipped = np.clip(values, 0.0, 1.0)
    return np.stack([np.interp(clipped, _HEAT_STOPS[:, 0], _HEAT_STOPS[:, c]) for c in (1, 2, 3)], axis=-1)


def scale_map(anomaly_map: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map raw anomaly values to [0, 1] between ``low`` (normal level) and ``high`` (clearly anomalous)."""
    span = max(high - low, np.finfo(np.float32).eps)
    return np.clip((anomaly_map - low) / span, 0.0, 1.0)


def overlay(image: np.ndarray, scaled_map: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend an RGB image (H x W x 3 in [0, 1]) with the heat colours of a [0, 1] map; uint8 result."""
    blended = (1 - alpha) * image + alpha * heat_colors(scaled_map)
    return (np.clip(blended, 0, 1) * 255).round().astype(np.uint8)


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path)
