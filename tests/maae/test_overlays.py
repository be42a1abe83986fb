"""maae.visualize.overlay_panels: one picture at the source resolution, with a heat panel that shows where the
map is high, a colour bar, and mask outlines when masks are known."""

from __future__ import annotations

import numpy as np

from maae.visualize import (
    COLOUR_BAR_FRACTION,
    MASK_COLOURS,
    MIN_COLOUR_BAR,
    MIN_PANEL_GAP,
    PANEL_GAP_FRACTION,
    heat_colors,
    overlay_panels,
)

HEIGHT, WIDTH = 120, 200  # a source image that is neither square nor the model's size
MODEL_SIZE = 32


def _grey_image() -> np.ndarray:
    return np.full((HEIGHT, WIDTH, 3), 0.5, dtype=np.float32)


def _hot_corner_map() -> np.ndarray:
    """A model-sized map that is high in its top-right quarter and zero elsewhere."""
    values = np.zeros((MODEL_SIZE, MODEL_SIZE), dtype=np.float32)
    values[: MODEL_SIZE // 2, MODEL_SIZE // 2:] = 1.0
    return values


def _layout() -> tuple[int, int]:
    gap = max(MIN_PANEL_GAP, round(PANEL_GAP_FRACTION * HEIGHT))
    bar = max(MIN_COLOUR_BAR, round(COLOUR_BAR_FRACTION * HEIGHT))
    return gap, bar


def test_picture_is_as_tall_as_the_source_and_panels_are_source_sized() -> None:
    gap, bar = _layout()
    picture = overlay_panels(_grey_image(), _hot_corner_map(), 0.0, 1.0)
    assert picture.dtype == np.uint8
    assert picture.shape == (HEIGHT, 2 * WIDTH + gap + bar, 3)
    with_masks = overlay_panels(_grey_image(), _hot_corner_map(), 0.0, 1.0,
                                masks={"ground truth": np.zeros((HEIGHT, WIDTH), np.uint8)})
    assert with_masks.shape == (HEIGHT, 3 * WIDTH + 2 * gap + bar, 3)


def test_heat_panel_differs_from_the_original_where_the_map_is_high() -> None:
    gap, _ = _layout()
    image = _grey_image()
    picture = overlay_panels(image, _hot_corner_map(), 0.0, 1.0).astype(np.int16)
    original = picture[:, :WIDTH]
    heat = picture[:, WIDTH + gap: 2 * WIDTH + gap]
    assert np.array_equal(original[HEIGHT // 2:], np.full_like(original[HEIGHT // 2:], 128))
    # The map was resized to the source: its hot quarter is the picture's top-right quarter (titles aside).
    hot = heat[HEIGHT // 8: HEIGHT // 2 - 4, WIDTH // 2 + 4:]
    cold = heat[HEIGHT // 2 + 4:, : WIDTH // 2 - 4]
    red, blue = (heat_colors(np.array([[1.0, 0.0]])) * 255)[0]
    assert np.abs(hot - (128 + red) / 2).max() <= 1  # half original grey, half the ramp's top colour
    assert np.abs(cold - (128 + blue) / 2).max() <= 1
    assert np.abs(hot - original[HEIGHT // 8: HEIGHT // 2 - 4, WIDTH // 2 + 4:]).mean() > 40


def test_colour_bar_runs_from_high_at_the_top_to_low_at_the_bottom() -> None:
    gap, bar = _layout()
    picture = overlay_panels(_grey_image(), _hot_corner_map(), 0.0, 1.0)
    strip = picture[:, 2 * WIDTH + gap + 1]
    assert np.abs(strip[0].astype(int) - heat_colors(np.array([1.0]))[0] * 255).max() <= 1
    assert np.abs(strip[-1].astype(int) - heat_colors(np.array([0.0]))[0] * 255).max() <= 1


def test_mask_outlines_are_drawn_on_the_original() -> None:
    gap, bar = _layout()
    truth = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    truth[70:100, 120:180] = 1
    predicted = np.zeros((MODEL_SIZE, MODEL_SIZE), dtype=bool)  # masks at the model's size are resized too
    predicted[20:28, 2:10] = True
    picture = overlay_panels(_grey_image(), _hot_corner_map(), 0.0, 1.0,
                             masks={"ground truth": truth, "predicted": predicted, "unused": None})
    panel = picture[:, 2 * WIDTH + 2 * gap + bar:]
    green = np.all(panel == MASK_COLOURS["ground truth"], axis=-1)
    magenta = np.all(panel == MASK_COLOURS["predicted"], axis=-1)
    assert green[70, 150] and green[99, 150] and green[85, 120] and not green[85, 150]  # edge, not fill
    rows, cols = np.nonzero(magenta[HEIGHT // 4:])  # below the title box
    assert rows.min() + HEIGHT // 4 >= 20 * HEIGHT // MODEL_SIZE - 2 and cols.max() <= 10 * WIDTH // MODEL_SIZE + 2
