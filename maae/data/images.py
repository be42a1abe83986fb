"""Reading image and mask files: decoding, conversion to RGB, resizing to the model's input size.

Every reader's samples and ``python -m maae predict`` go through these functions, so training, evaluation and
deployment see the same pixels. An image that is not plain 8-bit RGB (grey, grey with alpha, RGBA, 16-bit,
palette, CMYK) is converted, and one smaller than the model's input is enlarged; either change is said once
per image, as one :class:`ImageConversionWarning` line that names the file, never silently.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from maae.data.common import IMAGE_EXTENSIONS
from maae.errors import DataError

# PIL modes that hold 16-bit grey values; they are scaled to 8 bits before the RGB conversion.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_SIXTEEN_BIT_TO_EIGHT = 257.0
MAX_8BIT = 255.0
# PIL modes whose values a mask can be read from directly (one channel); others are converted to RGB first.
_SINGLE_CHANNEL_MODES = ("1", "L", "I", "F", *_SIXTEEN_BIT_MODES)
# What PIL raises on a file it cannot identify or decode.
_PIL_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class ImageConversionWarning(UserWarning):
    """An image was converted to RGB or enlarged to the model's input size (the message names the file)."""


def open_image(path: Path) -> Image.Image:
    """Open and decode an image file, turning any decoding failure into a DataError naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError as error:
        raise DataError(f"{path}: image file does not exist") from error
    except _PIL_READ_ERRORS as error:
        raise DataError(f"{path}: unreadable or corrupt image file ({error}); expected one of "
                        f"{', '.join(IMAGE_EXTENSIONS)}") from error


def header_size(path: Path) -> tuple[int, int]:
    """Check that a file is a readable image (PIL's verify reads the whole file) and return its size."""
    try:
        with Image.open(path) as image:
            size = image.size
            image.verify()
    except FileNotFoundError as error:
        raise DataError(f"{path}: image file does not exist") from error
    except _PIL_READ_ERRORS as error:
        raise DataError(f"{path}: unreadable or corrupt image file ({error}); expected one of "
                        f"{', '.join(IMAGE_EXTENSIONS)}") from error
    return size


@dataclass
class DecodedImage:
    """An image file as 8-bit RGB at its own resolution, and what had to change to get there."""

    path: Path
    rgb: Image.Image
    changes: list[str]

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the source image."""
        return self.rgb.size

    def source_pixels(self) -> np.ndarray:
        """H x W x 3 float32 in [0, 1] at the source resolution (what an overlay is drawn on)."""
        return np.asarray(self.rgb, dtype=np.float32) / MAX_8BIT

    def model_input(self, image_size: int) -> np.ndarray:
        """``image_size x image_size x 3`` float32 RGB in [0, 1]: the model's input.

        Pillow widens the bilinear kernel when it shrinks an image, so the resize is antialiased.
        """
        rgb = self.rgb
        if rgb.size != (image_size, image_size):
            rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.float32) / MAX_8BIT

    def enlargement(self, image_size: int) -> str | None:
        """How the image is enlarged to ``image_size`` (None when it is at least that large both ways)."""
        width, height = self.size
        if width >= image_size and height >= image_size:
            return None
        return f"{width}x{height} enlarged to the model's {image_size}x{image_size}"

    def warn(self, image_size: int) -> None:
        """Say in one warning line what changed for this image (nothing when it was plain RGB, large enough)."""
        changes = list(self.changes)
        enlarged = self.enlargement(image_size)
        if enlarged:
            changes.append(enlarged)
        if changes:
            warnings.warn(ImageConversionWarning(f"{self.path}: {'; '.join(changes)}"), stacklevel=3)


def to_rgb(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """``image`` as 8-bit RGB, and a description of the conversion (empty when it was RGB already)."""
    if image.mode == "RGB":
        return image, []
    source_mode = image.mode
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(image, dtype=np.float32) / _SIXTEEN_BIT_TO_EIGHT
        image = Image.fromarray(np.clip(np.rint(grey), 0, MAX_8BIT).astype(np.uint8))
    # Alpha is dropped, not blended: the colour channels are what the camera saw.
    return image.convert("RGB"), [f"{_mode_words(source_mode)} converted to RGB"]


def _mode_words(mode: str) -> str:
    """How a warning names an image's PIL mode: ``grey image (L)``, ``RGBA image``."""
    names = {"L": "grey", "LA": "grey+alpha", "P": "palette", "PA": "palette+alpha", "1": "black-and-white",
             "I": "32-bit grey", "F": "float grey"}
    if mode in _SIXTEEN_BIT_MODES:
        return "16-bit grey image"
    return f"{names[mode]} image ({mode})" if mode in names else f"{mode} image"


def decode_image(path: Path) -> DecodedImage:
    """Read an image file as 8-bit RGB at its own resolution (DataError naming the file if unreadable)."""
    path = Path(path)
    rgb, changes = to_rgb(open_image(path))
    return DecodedImage(path, rgb, changes)


def load_image(path: Path, image_size: int, *, warn: bool = True) -> np.ndarray:
    """An image as float32 ``image_size x image_size x 3`` RGB in [0, 1] (grey images are expanded).

    With ``warn``, a conversion or enlargement is said in one :class:`ImageConversionWarning` line.
    """
    decoded = decode_image(path)
    if warn:
        decoded.warn(image_size)
    return decoded.model_input(image_size)


def _mask_values(image: Image.Image) -> np.ndarray:
    """A decoded mask as uint8 H x W in {0, 1} at its own size: any non-zero colour value is a defect."""
    if image.mode not in _SINGLE_CHANNEL_MODES:
        image = image.convert("RGBA" if "A" in image.mode else "RGB")
    values = np.asarray(image)
    if values.ndim == 3:
        values = values[..., :3].max(axis=-1)  # any non-zero colour channel marks a defect; alpha does not
    return (values > 0).astype(np.uint8)


def _resize_binary(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A {0, 1} array resized to ``size`` = (width, height) with nearest neighbour, so it stays binary."""
    if values.shape[::-1] == tuple(size):
        return values
    return np.asarray(Image.fromarray(values).resize(size, Image.Resampling.NEAREST), dtype=np.uint8)


def mask_array(image: Image.Image, image_size: int) -> np.ndarray:
    """A decoded mask as uint8 ``image_size x image_size`` in {0, 1}."""
    return _resize_binary(_mask_values(image), (image_size, image_size))


def load_mask(path: Path | None, image_size: int) -> np.ndarray:
    """A mask as uint8 ``image_size x image_size`` in {0, 1} (any non-zero value is a defect); ``None``
    gives an empty mask. Resized with nearest neighbour so it stays binary."""
    if path is None:
        return np.zeros((image_size, image_size), dtype=np.uint8)
    return mask_array(open_image(Path(path)), image_size)


def load_mask_at(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A mask as uint8 H x W in {0, 1} at ``size`` = (width, height), e.g. its image's own resolution."""
    return _resize_binary(_mask_values(open_image(Path(path))), size)


def check_mask_size(image_path: Path, image_size: tuple[int, int], mask_path: Path,
                    mask_size: tuple[int, int]) -> None:
    if image_size != mask_size:
        raise DataError(f"{mask_path}: mask is {mask_size[0]}x{mask_size[1]} but its image {image_path.name} "
                        f"is {image_size[0]}x{image_size[1]} (expected equal sizes)")
