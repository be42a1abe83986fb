"""Pictures a person can read: heat-map overlays at the source image's resolution, with a colour bar.

:func:`overlay_panels` draws one PNG per image, side by side at the source resolution: the original, the
anomaly map blended over it with a colour bar that gives the map's values, and (when a ground-truth or a
predicted mask is known) the original with the mask outlines. The anomaly map comes at the model's input size
and is resized bilinearly to the source size (the model saw the image squeezed to a square; the resize undoes
that). Drawing needs only PIL and numpy.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from maae.io import write_bytes_atomic

# Colour stops of a perceptually ordered dark-blue -> cyan -> yellow -> red ramp.
_HEAT_STOPS = np.array([
    [0.0, 0.05, 0.05, 0.35],
    [0.35, 0.0, 0.65, 0.85],
    [0.65, 0.95, 0.9, 0.1],
    [1.0, 0.85, 0.05, 0.05],
], dtype=np.float32)
OVERLAY_ALPHA = 0.5
MAX_8BIT = 255

# Layout of a panel picture, as fractions of the source image's height (so a 1500 px VisA image and a 128 px
# crop look alike), with floors in pixels so small images stay legible.
PANEL_GAP_FRACTION = 0.02
MIN_PANEL_GAP = 2
COLOUR_BAR_FRACTION = 0.2  # width of the colour bar's column (strip + numbers)
MIN_COLOUR_BAR = 40
COLOUR_BAR_STRIP = 0.3  # the gradient strip's share of that column
FONT_FRACTION = 0.045
MIN_FONT = 9
OUTLINE_FRACTION = 0.004  # outline thickness
MIN_PANEL_FOR_TITLES = 64  # panels smaller than this (pixels, either side) carry no title
TITLE_PADDING = 2
COLOUR_BAR_TICKS = 5
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)
TITLE_BACKGROUND = (255, 255, 255, 190)
# Outline colours per mask kind, chosen to stand out on photographs and from each other.
MASK_COLOURS: dict[str, tuple[int, int, int]] = {"ground truth": (0, 220, 0), "predicted": (255, 0, 255)}
DEFAULT_MASK_COLOUR = (255, 255, 0)


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
    return _to_uint8(blended)


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float map (h x w) resized bilinearly to ``size`` = (width, height)."""
    if values.shape[::-1] == tuple(size):
        return values.astype(np.float32, copy=False)
    resized = Image.fromarray(values.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def overlay_panels(
    image: np.ndarray, anomaly_map: np.ndarray, low: float, high: float, *,
    masks: Mapping[str, np.ndarray | None] | None = None,
) -> np.ndarray:
    """One picture (uint8 H x W' x 3) at the source resolution H x W of ``image`` (float in [0, 1]).

    Panels, left to right: the original; the anomaly map (any size, resized to H x W) blended over it,
    coloured from ``low`` (dark blue) to ``high`` (red), with a colour bar labelled in the map's raw values;
    and, when ``masks`` holds any (name -> H x W or any-size binary mask, e.g. ``{"ground truth": ...,
    "predicted": ...}``), the original with each mask's outline. The picture is as tall as the source image.
    """
    height, width = image.shape[:2]
    original = _to_uint8(image)
    heat = overlay(image, scale_map(resize_map(anomaly_map, (width, height)), low, high))
    drawn = {name: mask for name, mask in (masks or {}).items() if mask is not None}
    gap = max(MIN_PANEL_GAP, round(PANEL_GAP_FRACTION * height))
    pieces = [_titled(original, [("original", TEXT_COLOUR)]), _blank(height, gap),
              _titled(heat, [("anomaly map", TEXT_COLOUR)]), _colour_bar(height, low, high)]
    if drawn:
        outlined = original.copy()
        legend = []
        for name, mask in drawn.items():
            colour = MASK_COLOURS.get(name, DEFAULT_MASK_COLOUR)
            _draw_outline(outlined, _binary_at(mask, (width, height)), colour)
            legend.append((f"{name} outline", colour))
        pieces += [_blank(height, gap), _titled(outlined, legend)]
    return np.concatenate(pieces, axis=1)


def save_png(path: Path, array: np.ndarray) -> None:
    """Write an H x W (x 3) array as PNG, atomically (floats in [0, 1] are scaled to 8 bits)."""
    if array.dtype != np.uint8:
        array = _to_uint8(array)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    write_bytes_atomic(Path(path), buffer.getvalue())


# --------------------------------------------------------------------------------------------- drawing ---

def _to_uint8(values: np.ndarray) -> np.ndarray:
    return (np.clip(values, 0, 1) * MAX_8BIT).round().astype(np.uint8)


def _blank(height: int, width: int) -> np.ndarray:
    return np.full((height, width, 3), BACKGROUND, dtype=np.uint8)


def _font(height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(MIN_FONT, round(FONT_FRACTION * height)))


def _binary_at(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    if binary.shape[::-1] != tuple(size):
        binary = np.asarray(Image.fromarray(binary).resize(size, Image.Resampling.NEAREST))
    return binary.astype(bool)


def _draw_outline(canvas: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> None:
    """Paint the boundary of ``mask`` onto ``canvas`` (in place), a few pixels thick on large images."""
    if not mask.any():
        return
    boundary = mask & ~ndimage.binary_erosion(mask, border_value=0)
    thickness = max(1, round(OUTLINE_FRACTION * min(mask.shape)))
    if thickness > 1:
        boundary = ndimage.binary_dilation(boundary, iterations=thickness - 1)
    canvas[boundary] = colour


def _titled(panel: np.ndarray, lines: list[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    """``panel`` with text lines (text, colour) in boxes at its top left; small panels stay bare."""
    height, width = panel.shape[:2]
    if min(height, width) < MIN_PANEL_FOR_TITLES:
        return panel
    picture = Image.fromarray(panel).convert("RGBA")
    layer = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font = _font(height)
    y = TITLE_PADDING
    for text, colour in lines:
        left, top, right, bottom = draw.textbbox((TITLE_PADDING, y), text, font=font)
        draw.rectangle((left - TITLE_PADDING, top - TITLE_PADDING, right + TITLE_PADDING, bottom + TITLE_PADDING),
                       fill=TITLE_BACKGROUND)
        draw.text((TITLE_PADDING, y), text, fill=colour, font=font)
        y = bottom + 2 * TITLE_PADDING
    return np.asarray(Image.alpha_composite(picture, layer).convert("RGB"))


def _colour_bar(height: int, low: float, high: float) -> np.ndarray:
    """A column as tall as the panels: a heat gradient (high at the top) and its raw values as numbers."""
    width = max(MIN_COLOUR_BAR, round(COLOUR_BAR_FRACTION * height))
    column = _blank(height, width)
    strip = max(1, round(COLOUR_BAR_STRIP * width))
    gradient = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None].repeat(strip, axis=1)
    column[:, :strip] = _to_uint8(heat_colors(gradient))
    picture = Image.fromarray(column)
    draw = ImageDraw.Draw(picture)
    font = _font(height)
    for tick in range(COLOUR_BAR_TICKS):
        fraction = tick / (COLOUR_BAR_TICKS - 1)  # 0 at the top (high) ... 1 at the bottom (low)
        value = high - fraction * (high - low)
        y = round(fraction * (height - 1))
        draw.line((strip, y, strip + TITLE_PADDING * 2, y), fill=TEXT_COLOUR)
        text = f"{value:.3g}"
        _, top, _, bottom = draw.textbbox((0, 0), text, font=font)
        text_y = min(max(y - (bottom + top) // 2, -top), height - bottom)  # centred on the tick, kept inside
        draw.text((strip + TITLE_PADDING * 3, text_y), text, fill=TEXT_COLOUR, font=font)
    return np.asarray(picture)
