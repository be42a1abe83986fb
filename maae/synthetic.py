"""The embedded data set: offline, procedurally generated, in MVTec-AD layout.

Six categories, so that a newcomer with no internet can run the whole pipeline:

* three textures cut from real photographs that ship inside scikit-image (``brick``, ``grass``, ``gravel``):
  random crops and flips, tinted to a colour per category, with small brightness/contrast/colour jitter;
* three objects drawn from signed distance fields (``hex_nut``, ``capsule``, ``bottle_cap``), with random
  position, rotation and *lighting* (light direction, global brightness, colour cast, a soft gradient).
  As in Fig. 2 of the paper, such lighting changes are normal, not defects.

Every category has three defect kinds, from small and low-contrast (scratch, crack, contamination, missing
print: under 1 % of the image) to loud (stain, foreign patch, hole, missing chip, dent). A defect is composed
onto the image *before* the lighting, and its mask is computed from the two final 8-bit renderings: it is
exactly the set of pixels whose value changed, because changes smaller than :data:`MIN_CHANGE` are undone.
A draw is kept only when its mask covers at least :data:`MIN_DEFECT_AREA` of the image and most of its
pixels change by :data:`VISIBLE_CHANGE` or more (so "subtle" never means "invisible").

Each image is drawn from its own ``numpy.random.SeedSequence([seed, crc32(category), split, defect, index])``,
so the same seed gives byte-identical PNG files (with the same zlib), and any one image can be re-rendered
alone (:func:`render_sample`).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

from maae.errors import ConfigError, DataError

EMBEDDED_VERSION = "v1"
EMBEDDED_IMAGE_SIZE = 256
DATA_CACHE_ENV = "MAAE_DATA_CACHE"
METADATA_FILE = "embedded.json"
MIN_IMAGE_SIZE = 64

# What counts as a defect pixel (fractions of the [0, 1] intensity range, per channel, max over channels).
MIN_CHANGE = 0.06
VISIBLE_CHANGE = 0.15
MIN_VISIBLE_FRACTION = 0.7
# Accepted defect areas, as fractions of the image area.
MIN_DEFECT_AREA = 0.002
MAX_DEFECT_AREA = 0.08
MAX_DEFECT_ATTEMPTS = 60
# Shapes are rasterised at this many times the image resolution, then box-filtered (antialiasing).
SUPERSAMPLE = 4
# Thin strokes never get thinner than this many pixels, whatever the image size.
MIN_STROKE_PX = 2.0
BYTE_MAX = 255
# zlib level 1: these photographic images compress no better at the default level 6, which is 4x slower.
PNG_COMPRESS_LEVEL = 1

# Texture photographs: crop side as a fraction of the photo, and the per-image photometric jitter.
CROP_FRACTION = (0.5, 0.62)
PHOTO_PERCENTILES = (1.0, 99.0)
TEXTURE_CONTRAST = (0.88, 1.12)
TEXTURE_BRIGHTNESS = 0.05
TEXTURE_CHANNEL_GAIN = 0.05
TEXTURE_MARGIN = 0.12  # defect centres stay this far (unit coordinates) from the image border

# Object lighting: global brightness, per-channel colour cast and the amplitude of a linear gradient.
LIGHT_BRIGHTNESS = (0.82, 1.15)
LIGHT_COLOUR_CAST = 0.08
LIGHT_GRADIENT = 0.25
OBJECT_SHIFT = 0.05  # object centre moves up to this much (unit coordinates) from the image centre
BACKGROUND_GRAIN = 0.05
BACKGROUND_GRAIN_SIGMA = 0.004  # grain correlation length, as a fraction of the image side
SHADOW_OFFSET = 0.015
SHADOW_SIGMA = 0.015
SHADOW_DEPTH = 0.45
# Blurred blobs (stains, dents) fade in between these fractions of their peak blur value.
STAIN_EDGE = (0.15, 0.55)

Colour = tuple[float, float, float]


# --------------------------------------------------------------------------------------------------------
# Rendering context and scene
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Palette:
    """Maps a grey photograph to colour: ``low`` for black, ``high`` for white, linear in between."""

    low: Colour
    high: Colour

    def tint(self, grey: np.ndarray) -> np.ndarray:
        low, high = np.asarray(self.low, np.float32), np.asarray(self.high, np.float32)
        return low + grey[..., None] * (high - low)


PALETTES = {
    "brick": Palette((0.30, 0.12, 0.08), (0.95, 0.80, 0.64)),
    "grass": Palette((0.05, 0.15, 0.03), (0.66, 0.86, 0.36)),
    "gravel": Palette((0.12, 0.11, 0.10), (0.86, 0.83, 0.77)),
}


class PhotoLibrary:
    """The grey texture photographs bundled with scikit-image, normalised to [0, 1]."""

    def __init__(self, names: tuple[str, ...] = tuple(PALETTES)) -> None:
        self.photos = {name: _bundled_photo(name) for name in names}

    def crop(self, name: str, rng: np.random.Generator, size: int, rotate: bool) -> np.ndarray:
        """A random square crop (random side, position, flips; quarter turns if ``rotate``) at ``size``."""
        photo = self.photos[name]
        side = int(rng.uniform(*CROP_FRACTION) * min(photo.shape))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = photo[top:top + side, left:left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        if rng.random() < 0.5:
            crop = crop[::-1, :]
        if rotate:
            crop = np.rot90(crop, int(rng.integers(0, 4)))
        resized = Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(resized, dtype=np.float32)


def _bundled_photo(name: str) -> np.ndarray:
    """Load a photo that ships inside scikit-image, refusing anything that would need a download."""
    bundled = Path(skimage.data.__file__).parent / f"{name}.png"
    if not bundled.is_file():
        raise DataError(f"{bundled}: scikit-image {skimage.__version__} does not bundle the {name} photo "
                        "(expected scikit-image >= 0.24 with its data files; the embedded set never downloads)")
    grey = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
    low, high = np.percentile(grey, PHOTO_PERCENTILES)
    return np.clip((grey - low) / (high - low), 0.0, 1.0)


@dataclass(frozen=True)
class Context:
    """What every renderer needs: the image size, unit pixel-centre coordinates and the photos."""

    size: int
    xs: np.ndarray
    ys: np.ndarray
    photos: PhotoLibrary

    @classmethod
    def create(cls, size: int, photos: PhotoLibrary | None = None) -> Context:
        centres = (np.arange(size, dtype=np.float32) + 0.5) / size
        ys, xs = np.meshgrid(centres, centres, indexing="ij")
        return cls(size, xs, ys, photos or PhotoLibrary())

    def stroke_width(self, unit_width: float) -> float:
        """A stroke width in pixels, never thinner than :data:`MIN_STROKE_PX`."""
        return max(unit_width * self.size, MIN_STROKE_PX)


@dataclass
class Scene:
    """A defect-free rendering before lighting, and where defects may be drawn.

    ``albedo`` (HxWx3) times ``lighting`` (HxWx3) is the final image. ``support`` (HxW in [0, 1]) is where a
    surface defect may change pixels, ``core`` (HxW bool) where its centre may be; ``layers`` holds other
    renderings a defect reveals (``background``: the scene without the object; ``unprinted``: no print).
    """

    albedo: np.ndarray
    lighting: np.ndarray
    support: np.ndarray
    core: np.ndarray
    layers: dict[str, np.ndarray] = field(default_factory=dict)
    geometry: dict[str, float] = field(default_factory=dict)


# A defect draws its parameters from the generator and returns (alpha HxW in [0, 1], paint HxWx3 or RGB).
Defect = Callable[[Scene, np.random.Generator, Context], tuple[np.ndarray, np.ndarray]]


# --------------------------------------------------------------------------------------------------------
# Shapes (unit coordinates: x, y in [0, 1], y down)
# --------------------------------------------------------------------------------------------------------


def _raster(ctx: Context, draw: Callable[[ImageDraw.ImageDraw, float], None]) -> np.ndarray:
    """Coverage in [0, 1] of shapes drawn at :data:`SUPERSAMPLE` times the resolution (``draw`` gets the
    scale from unit coordinates to supersampled pixels)."""
    scale = ctx.size * SUPERSAMPLE
    canvas = Image.new("L", (scale, scale), 0)
    draw(ImageDraw.Draw(canvas), scale)
    return np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float32) / BYTE_MAX


def _polyline_alpha(ctx: Context, points: np.ndarray, width_px: float) -> np.ndarray:
    def draw(canvas: ImageDraw.ImageDraw, scale: float) -> None:
        width = max(1, round(width_px * SUPERSAMPLE))
        coords = [(float(x * scale), float(y * scale)) for x, y in points]
        canvas.line(coords, fill=BYTE_MAX, width=width, joint="curve")
        radius = width / 2
        for x, y in (coords[0], coords[-1]):
            canvas.ellipse((x - radius, y - radius, x + radius, y + radius), fill=BYTE_MAX)

    return _raster(ctx, draw)


def _polygons_alpha(ctx: Context, polygons: list[np.ndarray]) -> np.ndarray:
    def draw(canvas: ImageDraw.ImageDraw, scale: float) -> None:
        for polygon in polygons:
            canvas.polygon([(float(x * scale), float(y * scale)) for x, y in polygon], fill=BYTE_MAX)

    return _raster(ctx, draw)


def _blob(rng: np.random.Generator, centre: np.ndarray, radius: float, irregularity: float = 0.3,
          vertices: int = 48) -> np.ndarray:
    """An irregular closed outline: a circle whose radius wobbles with a few random harmonics."""
    angles = np.linspace(0.0, 2 * math.pi, vertices, endpoint=False)
    radii = np.ones_like(angles)
    for harmonic in (2, 3, 4, 5):
        radii += rng.uniform(0, irregularity / harmonic) * np.cos(harmonic * angles + rng.uniform(0, 2 * math.pi))
    stretch = rng.uniform(0.7, 1.3)
    turn = rng.uniform(0, 2 * math.pi)
    x, y = radius * radii * np.cos(angles) * stretch, radius * radii * np.sin(angles) / stretch
    return centre + np.stack([x * math.cos(turn) - y * math.sin(turn), x * math.sin(turn) + y * math.cos(turn)], 1)


def _bezier(rng: np.random.Generator, start: np.ndarray, length: float, bend: float,
            samples: int = 64) -> np.ndarray:
    """A quadratic Bezier curve of about ``length`` from ``start`` in a random direction."""
    angle = rng.uniform(0, 2 * math.pi)
    direction = np.array([math.cos(angle), math.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    end = start + length * direction
    control = (start + end) / 2 + rng.uniform(-bend, bend) * normal
    t = np.linspace(0.0, 1.0, samples)[:, None]
    return (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t ** 2 * end


def _random_walk(rng: np.random.Generator, start: np.ndarray, steps: int, step: float, turn: float,
                 heading: float | None = None) -> np.ndarray:
    """A jagged path (cracks): fixed-length steps whose heading (random unless given) turns randomly."""
    heading = rng.uniform(0, 2 * math.pi) if heading is None else heading
    points = [start]
    for _ in range(steps):
        heading += rng.normal(0.0, turn)
        points.append(points[-1] + step * np.array([math.cos(heading), math.sin(heading)]))
    return np.array(points)


def _pick_point(rng: np.random.Generator, ctx: Context, region: np.ndarray) -> np.ndarray:
    """A random pixel centre of ``region`` (bool HxW), in unit coordinates."""
    flat = np.flatnonzero(region)
    chosen = int(flat[int(rng.integers(0, flat.size))])
    row, column = divmod(chosen, ctx.size)
    return np.array([(column + 0.5) / ctx.size, (row + 0.5) / ctx.size])


def _smooth_noise(rng: np.random.Generator, ctx: Context, sigma_fraction: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian noise correlated over ``sigma_fraction`` of the image side."""
    noise = gaussian_filter(rng.standard_normal((ctx.size, ctx.size)).astype(np.float32),
                            sigma=max(sigma_fraction * ctx.size, 0.5))
    return noise / max(float(noise.std()), 1e-6)


def _rotate(x: np.ndarray, y: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in a frame turned by ``angle`` (so shapes drawn in it appear turned by ``angle``)."""
    cos, sin = math.cos(angle), math.sin(angle)
    return x * cos + y * sin, -x * sin + y * cos


def _from_local(centre: np.ndarray, angle: float, u: float, v: float) -> np.ndarray:
    cos, sin = math.cos(angle), math.sin(angle)
    return centre + np.array([u * cos - v * sin, u * sin + v * cos])


def _smoothstep(edges: tuple[float, float], values: np.ndarray) -> np.ndarray:
    """0 below ``edges[0]``, 1 above ``edges[1]``, a smooth S-curve in between (soft but bounded edges)."""
    t = np.clip((values - edges[0]) / (edges[1] - edges[0]), 0.0, 1.0)
    return (t * t * (3 - 2 * t)).astype(np.float32)


def _coverage(ctx: Context, signed_distance: np.ndarray) -> np.ndarray:
    """Antialiased inside-coverage of a signed distance field in unit coordinates (negative inside)."""
    return np.clip(0.5 - signed_distance * ctx.size, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------------
# Textures
# --------------------------------------------------------------------------------------------------------


def _render_texture(rng: np.random.Generator, ctx: Context, photo: str, rotate: bool) -> Scene:
    grey = ctx.photos.crop(photo, rng, ctx.size, rotate)
    contrast = rng.uniform(*TEXTURE_CONTRAST)
    brightness = rng.uniform(-TEXTURE_BRIGHTNESS, TEXTURE_BRIGHTNESS)
    grey = np.clip((grey - 0.5) * contrast + 0.5 + brightness, 0.0, 1.0)
    gain = rng.uniform(1 - TEXTURE_CHANNEL_GAIN, 1 + TEXTURE_CHANNEL_GAIN, 3).astype(np.float32)
    albedo = PALETTES[photo].tint(grey) * gain
    inner = (ctx.xs > TEXTURE_MARGIN) & (ctx.xs < 1 - TEXTURE_MARGIN)
    inner &= (ctx.ys > TEXTURE_MARGIN) & (ctx.ys < 1 - TEXTURE_MARGIN)
    ones = np.ones((ctx.size, ctx.size), np.float32)
    return Scene(albedo, np.ones_like(albedo), ones, inner)


# --------------------------------------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------------------------------------


def _object_lighting(rng: np.random.Generator, ctx: Context) -> np.ndarray:
    """Normal lighting variation: global brightness, a colour cast and a soft linear gradient."""
    brightness = rng.uniform(*LIGHT_BRIGHTNESS)
    cast = rng.uniform(1 - LIGHT_COLOUR_CAST, 1 + LIGHT_COLOUR_CAST, 3).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = ((ctx.xs - 0.5) * math.cos(angle) + (ctx.ys - 0.5) * math.sin(angle)) * 2
    gradient = 1 + rng.uniform(0, LIGHT_GRADIENT) * ramp
    return (brightness * gradient[..., None] * cast).astype(np.float32)


def _background(rng: np.random.Generator, ctx: Context, colour: Colour) -> np.ndarray:
    grain = 1 + BACKGROUND_GRAIN * _smooth_noise(rng, ctx, BACKGROUND_GRAIN_SIGMA)
    return np.asarray(colour, np.float32) * grain[..., None]


def _cast_shadow(ctx: Context, background: np.ndarray, coverage: np.ndarray, light_angle: float) -> np.ndarray:
    """Darken the background under a blurred copy of the object moved away from the light."""
    shift = SHADOW_OFFSET * ctx.size
    dx, dy = -round(shift * math.cos(light_angle)), -round(shift * math.sin(light_angle))
    shadow = gaussian_filter(np.roll(coverage, (dy, dx), axis=(0, 1)), sigma=SHADOW_SIGMA * ctx.size)
    return background * (1 - SHADOW_DEPTH * shadow)[..., None]


def _compose(background: np.ndarray, coverage: np.ndarray, surface: np.ndarray) -> np.ndarray:
    return (background * (1 - coverage[..., None]) + surface * coverage[..., None]).astype(np.float32)


def _hexagon_sdf(x: np.ndarray, y: np.ndarray, apothem: float) -> np.ndarray:
    """Signed distance to a regular hexagon with flat top and bottom (vertices on the x axis)."""
    kx, ky, kz = -math.sqrt(3) / 2, 0.5, 1 / math.sqrt(3)
    x, y = np.abs(x), np.abs(y)
    fold = np.minimum(kx * x + ky * y, 0.0)
    x, y = x - 2 * fold * kx, y - 2 * fold * ky
    x = x - np.clip(x, -kz * apothem, kz * apothem)
    y = y - apothem
    return np.hypot(x, y) * np.sign(y)


NUT_APOTHEM = 0.27
NUT_HOLE = 0.42  # hole radius / apothem
NUT_THREAD = 0.035  # width of the threaded ring around the hole
NUT_CHAMFER = 0.93  # the flat face ends at this fraction of the apothem
NUT_METAL: Colour = (0.66, 0.65, 0.62)
NUT_BACKGROUND: Colour = (0.13, 0.14, 0.16)


def _render_hex_nut(rng: np.random.Generator, ctx: Context) -> Scene:
    centre = 0.5 + rng.uniform(-OBJECT_SHIFT, OBJECT_SHIFT, 2)
    turn = rng.uniform(0, math.pi / 3)
    light = rng.uniform(0, 2 * math.pi)
    x, y = ctx.xs - centre[0], ctx.ys - centre[1]
    u, v = _rotate(x, y, turn)
    radius, image_angle = np.hypot(x, y), np.arctan2(y, x)
    hole = NUT_HOLE * NUT_APOTHEM
    outline = _hexagon_sdf(u, v, NUT_APOTHEM)
    coverage = _coverage(ctx, np.maximum(outline, hole - radius))
    facing = np.cos(image_angle - light)  # how much a sloped surface faces the light
    shade = 1 + 0.08 * np.cos(2 * (image_angle - light))  # anisotropic sheen of a machined face
    shade = np.where(radius > NUT_CHAMFER * NUT_APOTHEM, 0.72 + 0.25 * facing, shade)
    thread = radius < hole + NUT_THREAD
    ripple = np.cos(2 * math.pi * radius / (NUT_THREAD / 4))
    shade = np.where(thread, 0.45 + 0.08 * ripple - 0.15 * facing, shade)
    shade = np.where(-outline < 0.008, shade * (0.8 + 0.25 * facing), shade)
    surface = np.asarray(NUT_METAL, np.float32) * shade[..., None]
    background = _cast_shadow(ctx, _background(rng, ctx, NUT_BACKGROUND), coverage, light)
    face = (radius > hole + NUT_THREAD + 0.005) & (-outline > 0.01)
    core = (radius > hole + NUT_THREAD + 0.03) & (-outline > 0.04)
    return Scene(
        _compose(background, coverage, surface), _object_lighting(rng, ctx),
        support=coverage * face, core=core, layers={"background": background, "coverage": coverage},
        geometry={"cx": float(centre[0]), "cy": float(centre[1]), "turn": turn, "light": light},
    )


CAPSULE_HALF_LENGTH = 0.22
CAPSULE_RADIUS = 0.115
CAPSULE_TILT = 0.35  # radians either way
CAPSULE_CAP: Colour = (0.78, 0.20, 0.16)
CAPSULE_BODY: Colour = (0.94, 0.91, 0.84)
CAPSULE_PRINT: Colour = (0.12, 0.16, 0.45)
CAPSULE_BAND_AT = 0.55  # band centre along the ivory half, as a fraction of the half length
CAPSULE_BAND_WIDTH = 0.045
CAPSULE_BACKGROUND: Colour = (0.20, 0.30, 0.33)


def _render_capsule(rng: np.random.Generator, ctx: Context) -> Scene:
    centre = 0.5 + rng.uniform(-OBJECT_SHIFT, OBJECT_SHIFT, 2)
    turn = rng.uniform(-CAPSULE_TILT, CAPSULE_TILT)
    light = rng.uniform(0, 2 * math.pi)
    highlight = rng.uniform(-0.45, 0.45)  # where the specular stripe sits across the capsule
    u, v = _rotate(ctx.xs - centre[0], ctx.ys - centre[1], turn)
    along = np.maximum(np.abs(u) - CAPSULE_HALF_LENGTH, 0.0)
    rho = np.hypot(along, v) / CAPSULE_RADIUS
    coverage = _coverage(ctx, (rho - 1) * CAPSULE_RADIUS)
    height = np.sqrt(np.clip(1 - rho ** 2, 0.0, 1.0))
    shade = (0.5 + 0.5 * height) * np.where(np.abs(u) < 0.004, 0.75, 1.0)
    specular = 0.3 * np.exp(-((v / CAPSULE_RADIUS - highlight) ** 2) / (2 * 0.12 ** 2)) * height
    colour = np.where((u < 0)[..., None], np.float32(CAPSULE_CAP), np.float32(CAPSULE_BODY))
    band = (np.abs(u - CAPSULE_BAND_AT * CAPSULE_HALF_LENGTH) < CAPSULE_BAND_WIDTH / 2) & (rho < 0.92)
    printed = np.where(band[..., None], np.float32(CAPSULE_PRINT), colour)
    background = _cast_shadow(ctx, _background(rng, ctx, CAPSULE_BACKGROUND), coverage, light)

    def finish(surface_colour: np.ndarray) -> np.ndarray:
        return _compose(background, coverage, surface_colour * shade[..., None] + specular[..., None])

    return Scene(
        finish(printed), _object_lighting(rng, ctx), support=coverage * (rho < 0.85),
        core=(rho < 0.6) & (np.abs(u) < CAPSULE_HALF_LENGTH), layers={"unprinted": finish(colour),
                                                                      "coverage": coverage},
        geometry={"cx": float(centre[0]), "cy": float(centre[1]), "turn": turn, "light": light},
    )


CAP_RADIUS = 0.32
CAP_RIM = 0.88  # the knurled rim starts at this fraction of the radius
CAP_KNURLS = 56
CAP_COLOUR: Colour = (0.75, 0.13, 0.11)
CAP_LOGO: Colour = (0.95, 0.93, 0.90)
CAP_BACKGROUND: Colour = (0.78, 0.74, 0.66)


def _render_bottle_cap(rng: np.random.Generator, ctx: Context) -> Scene:
    centre = 0.5 + rng.uniform(-OBJECT_SHIFT, OBJECT_SHIFT, 2)
    turn = rng.uniform(0, 2 * math.pi)
    light = rng.uniform(0, 2 * math.pi)
    x, y = ctx.xs - centre[0], ctx.ys - centre[1]
    u, v = _rotate(x, y, turn)
    rho = np.hypot(x, y) / CAP_RADIUS
    image_angle = np.arctan2(y, x)
    coverage = _coverage(ctx, (rho - 1) * CAP_RADIUS)
    facing = np.cos(image_angle - light)
    slope = (x * math.cos(light) + y * math.sin(light)) / CAP_RADIUS
    shade = 0.88 + 0.12 * slope
    shade = np.where((rho > 0.74) & (rho < 0.77), shade * 0.7, shade)
    knurl = 0.8 + 0.2 * np.cos(CAP_KNURLS * image_angle)
    shade = np.where(rho > CAP_RIM, knurl * (0.75 + 0.25 * facing), shade)
    logo = ((rho > 0.36) & (rho < 0.44)) | ((np.abs(v) < 0.05 * CAP_RADIUS) & (np.abs(u) < 0.36 * CAP_RADIUS))
    colour = np.where(logo[..., None], np.float32(CAP_LOGO), np.float32(CAP_COLOUR))
    background = _cast_shadow(ctx, _background(rng, ctx, CAP_BACKGROUND), coverage, light)
    return Scene(
        _compose(background, coverage, colour * shade[..., None]), _object_lighting(rng, ctx),
        support=coverage * (rho < 0.86), core=rho < 0.7, layers={"coverage": coverage},
        geometry={"cx": float(centre[0]), "cy": float(centre[1]), "turn": turn, "light": light},
    )


# --------------------------------------------------------------------------------------------------------
# Defects: each returns (alpha, paint); the image becomes albedo * (1 - alpha) + paint * alpha
# --------------------------------------------------------------------------------------------------------


def _scratch(scene: Scene, rng: np.random.Generator, ctx: Context, colour: Colour,
             strength: float) -> tuple[np.ndarray, np.ndarray]:
    """A thin curve of ``colour`` (low contrast, usually under 1 % of the image)."""
    start = _pick_point(rng, ctx, scene.core)
    path = _bezier(rng, start, rng.uniform(0.2, 0.38), bend=0.08)
    alpha = _polyline_alpha(ctx, path, ctx.stroke_width(rng.uniform(0.008, 0.012)))
    return strength * alpha * scene.support, np.asarray(colour, np.float32)


def _arc_scratch(scene: Scene, rng: np.random.Generator, ctx: Context, colour: Colour, strength: float,
                 radius: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """A thin arc of ``colour`` around the object centre (a tool mark on a round face)."""
    centre = np.array([scene.geometry["cx"], scene.geometry["cy"]])
    ring = rng.uniform(*radius)
    start = rng.uniform(0, 2 * math.pi)
    angles = start + np.linspace(0.0, rng.uniform(0.15, 0.3) / ring, 48)
    wobble = ring + rng.uniform(-0.015, 0.015) * np.linspace(-1.0, 1.0, angles.size)
    path = centre + np.stack([wobble * np.cos(angles), wobble * np.sin(angles)], 1)
    alpha = _polyline_alpha(ctx, path, ctx.stroke_width(rng.uniform(0.011, 0.015)))
    return strength * alpha * scene.support, np.asarray(colour, np.float32)


def _crack(scene: Scene, rng: np.random.Generator, ctx: Context, colour: Colour,
           strength: float) -> tuple[np.ndarray, np.ndarray]:
    """A dark jagged line with one branch."""
    start = _pick_point(rng, ctx, scene.core)
    # Along the object's axis when it has one, so the crack stays on it.
    heading = scene.geometry["turn"] + math.pi * int(rng.integers(0, 2)) if "turn" in scene.geometry else None
    trunk = _random_walk(rng, start, int(rng.integers(10, 16)), 0.016, turn=0.4, heading=heading)
    branch = _random_walk(rng, trunk[len(trunk) // 2], int(rng.integers(4, 8)), 0.014, turn=0.5)
    width = ctx.stroke_width(rng.uniform(0.008, 0.011))
    alpha = np.maximum(_polyline_alpha(ctx, trunk, width), _polyline_alpha(ctx, branch, width))
    return strength * alpha * scene.support, np.asarray(colour, np.float32)


def _stain(scene: Scene, rng: np.random.Generator, ctx: Context, colour: Colour, strength: float,
           radius: tuple[float, float] = (0.045, 0.08)) -> tuple[np.ndarray, np.ndarray]:
    """A blurred blob of colour (oil, rust, paint) with a mottled inside."""
    size = rng.uniform(*radius)
    outline = _blob(rng, _pick_point(rng, ctx, scene.core), size)
    alpha = gaussian_filter(_polygons_alpha(ctx, [outline]), sigma=0.25 * size * ctx.size)
    alpha = _smoothstep(STAIN_EDGE, alpha / max(float(alpha.max()), 1e-6))
    mottle = 1 + 0.15 * _smooth_noise(rng, ctx, 0.01)
    paint = np.asarray(colour, np.float32) * mottle[..., None]
    return strength * alpha * scene.support, paint


def _spots(scene: Scene, rng: np.random.Generator, ctx: Context, colour: Colour,
           strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Contamination: a few small specks close together (usually under 1 % of the image)."""
    centre = _pick_point(rng, ctx, scene.core)
    outlines = [
        _blob(rng, centre + rng.uniform(-0.05, 0.05, 2), rng.uniform(0.012, 0.024), irregularity=0.2)
        for _ in range(int(rng.integers(3, 6)))
    ]
    return strength * _polygons_alpha(ctx, outlines) * scene.support, np.asarray(colour, np.float32)


def _foreign_patch(scene: Scene, rng: np.random.Generator, ctx: Context,
                   photo: str) -> tuple[np.ndarray, np.ndarray]:
    """A patch of another texture pasted in, with that texture's own colours."""
    outline = _blob(rng, _pick_point(rng, ctx, scene.core), rng.uniform(0.06, 0.10))
    paint = PALETTES[photo].tint(ctx.photos.crop(photo, rng, ctx.size, rotate=True))
    return _polygons_alpha(ctx, [outline]) * scene.support, paint


def _hole(scene: Scene, rng: np.random.Generator, ctx: Context, colour: Colour) -> tuple[np.ndarray, np.ndarray]:
    """A bare patch: an irregular region of dark soil."""
    outline = _blob(rng, _pick_point(rng, ctx, scene.core), rng.uniform(0.04, 0.07), irregularity=0.5)
    soil = np.asarray(colour, np.float32) * (1 + 0.2 * _smooth_noise(rng, ctx, 0.006))[..., None]
    return _polygons_alpha(ctx, [outline]) * scene.support, soil


def _missing_chip(scene: Scene, rng: np.random.Generator, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """A piece broken off at one corner of the nut, showing the background."""
    geometry = scene.geometry
    corner = int(rng.integers(0, 6))
    circumradius = NUT_APOTHEM / math.cos(math.pi / 6)
    angle = geometry["turn"] + corner * math.pi / 3
    reach = circumradius - rng.uniform(0.0, 0.03)
    centre = np.array([geometry["cx"] + reach * math.cos(angle), geometry["cy"] + reach * math.sin(angle)])
    outline = _blob(rng, centre, rng.uniform(0.06, 0.09), irregularity=0.25)
    return _polygons_alpha(ctx, [outline]) * scene.layers["coverage"], scene.layers["background"]


def _print_missing(scene: Scene, rng: np.random.Generator, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """Part of the printed band is missing (a small, high-contrast change)."""
    geometry = scene.geometry
    centre = _from_local(np.array([geometry["cx"], geometry["cy"]]), geometry["turn"],
                         CAPSULE_BAND_AT * CAPSULE_HALF_LENGTH, rng.uniform(-0.55, 0.55) * CAPSULE_RADIUS)
    outline = _blob(rng, centre, rng.uniform(0.03, 0.05), irregularity=0.3)
    return _polygons_alpha(ctx, [outline]) * scene.layers["coverage"], scene.layers["unprinted"]


def _dent(scene: Scene, rng: np.random.Generator, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """A dent: a soft region shaded darker on the side facing away from the light."""
    size = rng.uniform(0.05, 0.08)
    centre = _pick_point(rng, ctx, scene.core)
    outline = _blob(rng, centre, size, irregularity=0.2)
    alpha = gaussian_filter(_polygons_alpha(ctx, [outline]), sigma=0.2 * size * ctx.size)
    alpha = _smoothstep(STAIN_EDGE, alpha / max(float(alpha.max()), 1e-6))
    light = scene.geometry["light"]
    slope = ((ctx.xs - centre[0]) * math.cos(light) + (ctx.ys - centre[1]) * math.sin(light)) / size
    shade = np.clip(0.5 + 0.25 * slope, 0.3, 0.72)
    return alpha * scene.support, scene.albedo * shade[..., None]


# --------------------------------------------------------------------------------------------------------
# Categories
# --------------------------------------------------------------------------------------------------------

PALE: Colour = (0.92, 0.90, 0.86)
DARK: Colour = (0.08, 0.07, 0.06)


@dataclass(frozen=True)
class CategorySpec:
    """A category of the embedded set: how to render a normal image and its defect kinds, by name."""

    name: str
    render: Callable[[np.random.Generator, Context], Scene]
    defects: dict[str, Defect]


CATEGORIES: tuple[CategorySpec, ...] = (
    CategorySpec("brick", partial(_render_texture, photo="brick", rotate=False), {
        "scratch": partial(_scratch, colour=PALE, strength=0.55),
        "stain": partial(_stain, colour=DARK, strength=0.85),
        "foreign_patch": partial(_foreign_patch, photo="gravel"),
    }),
    CategorySpec("grass", partial(_render_texture, photo="grass", rotate=True), {
        "hole": partial(_hole, colour=(0.22, 0.14, 0.08)),
        "contamination": partial(_spots, colour=(0.93, 0.93, 0.88), strength=0.9),
        "foreign_patch": partial(_foreign_patch, photo="brick"),
    }),
    CategorySpec("gravel", partial(_render_texture, photo="gravel", rotate=True), {
        "stain": partial(_stain, colour=(0.15, 0.30, 0.75), strength=0.8),
        "contamination": partial(_spots, colour=(0.80, 0.12, 0.10), strength=0.9),
        "foreign_patch": partial(_foreign_patch, photo="grass"),
    }),
    CategorySpec("hex_nut", _render_hex_nut, {
        "scratch": partial(_arc_scratch, colour=(0.25, 0.25, 0.27), strength=0.75, radius=(0.17, 0.23)),
        "missing_chip": _missing_chip,
        "rust": partial(_stain, colour=(0.50, 0.22, 0.08), strength=0.9, radius=(0.035, 0.06)),
    }),
    CategorySpec("capsule", _render_capsule, {
        "crack": partial(_crack, colour=DARK, strength=0.85),
        "contamination": partial(_spots, colour=(0.10, 0.09, 0.08), strength=0.9),
        "print_missing": _print_missing,
    }),
    CategorySpec("bottle_cap", _render_bottle_cap, {
        "dent": _dent,
        "scratch": partial(_scratch, colour=PALE, strength=0.6),
        "paint_spot": partial(_stain, colour=(0.95, 0.82, 0.15), strength=0.9, radius=(0.025, 0.045)),
    }),
)
# Sorted, as maae.data.discover_categories lists them.
CATEGORY_NAMES: tuple[str, ...] = tuple(sorted(spec.name for spec in CATEGORIES))
_SPLIT_CODES = {"train": 0, "test": 1}


# --------------------------------------------------------------------------------------------------------
# Rendering one sample, and the whole data set
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedSample:
    """One rendered image: ``clean`` (the defect-free rendering), ``image`` (what is saved) and ``mask``
    (bool HxW, exactly the pixels where ``image`` differs from ``clean``; all False for good images)."""

    clean: np.ndarray
    image: np.ndarray
    mask: np.ndarray


def _to_bytes(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * BYTE_MAX), 0, BYTE_MAX).astype(np.uint8)


def _category(name: str) -> CategorySpec:
    for spec in CATEGORIES:
        if spec.name == name:
            return spec
    raise ConfigError(f"embedded category {name!r} is unknown; expected one of {', '.join(CATEGORY_NAMES)}")


def _sample_rng(seed: int, category: str, split: str, defect: int, index: int) -> np.random.Generator:
    """The generator of one image; keyed by the category's name, so adding a category changes no other."""
    key = zlib.crc32(category.encode())
    return np.random.default_rng(np.random.SeedSequence([seed, key, _SPLIT_CODES[split], defect, index]))


def render_sample(category: str, defect: str, seed: int = 0, index: int = 0, split: str = "test",
                  image_size: int = EMBEDDED_IMAGE_SIZE, ctx: Context | None = None) -> RenderedSample:
    """Render one image of the embedded set (``defect`` is ``"good"`` or a defect kind of ``category``).

    The same arguments always give the same pixels; :func:`generate_dataset` saves exactly these.
    """
    spec = _category(category)
    kinds = list(spec.defects)
    if defect != "good" and defect not in spec.defects:
        raise ConfigError(f"defect {defect!r} of embedded category {category!r} is unknown; "
                          f"expected good or one of {', '.join(kinds)}")
    ctx = ctx if ctx is not None and ctx.size == image_size else Context.create(image_size)
    rng = _sample_rng(seed, category, split, 0 if defect == "good" else kinds.index(defect) + 1, index)
    scene = spec.render(rng, ctx)
    clean = _to_bytes(np.clip(scene.albedo * scene.lighting, 0.0, 1.0))
    if defect == "good":
        return RenderedSample(clean, clean, np.zeros(clean.shape[:2], dtype=bool))
    for _ in range(MAX_DEFECT_ATTEMPTS):
        alpha, paint = spec.defects[defect](scene, rng, ctx)
        alpha = alpha[..., None]
        changed = _to_bytes(np.clip((scene.albedo * (1 - alpha) + paint * alpha) * scene.lighting, 0.0, 1.0))
        difference = np.abs(changed.astype(np.int16) - clean.astype(np.int16)).max(axis=-1)
        mask = difference >= round(MIN_CHANGE * BYTE_MAX)
        area = float(mask.mean())
        visible = float((difference[mask] >= round(VISIBLE_CHANGE * BYTE_MAX)).mean()) if mask.any() else 0.0
        if MIN_DEFECT_AREA <= area <= MAX_DEFECT_AREA and visible >= MIN_VISIBLE_FRACTION:
            return RenderedSample(clean, np.where(mask[..., None], changed, clean), mask)
    raise RuntimeError(f"embedded set: no visible {defect} on {category} image {index} after "
                       f"{MAX_DEFECT_ATTEMPTS} draws (a generator bug)")


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _check_count(name: str, value: int, minimum: int) -> None:
    if int(value) != value or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def generate_dataset(out_dir: Path, seed: int = 0, *, train_per_category: int = 60, test_good: int = 12,
                     test_per_defect: int = 6, image_size: int = EMBEDDED_IMAGE_SIZE) -> list[str]:
    """Write the embedded data set in MVTec-AD layout into ``out_dir`` (new or empty); return its categories.

    Also writes ``embedded.json`` (version, seed, sizes, counts) next to the category folders.
    """
    _check_count("train_per_category", train_per_category, 1)
    _check_count("test_good", test_good, 1)
    _check_count("test_per_defect", test_per_defect, 1)
    _check_count("image_size", image_size, MIN_IMAGE_SIZE)
    _check_count("seed", seed, 0)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(f"{out_dir}: output folder is not empty (expected a new or empty folder)")
    ctx = Context.create(image_size)
    counts: dict[str, dict[str, int]] = {}
    for spec in CATEGORIES:
        plan = [("train", "good", train_per_category), ("test", "good", test_good)]
        plan += [("test", defect, test_per_defect) for defect in spec.defects]
        for split, defect, count in plan:
            image_dir = out_dir / spec.name / split / defect
            image_dir.mkdir(parents=True, exist_ok=True)
            mask_dir = out_dir / spec.name / "ground_truth" / defect
            if defect != "good":
                mask_dir.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                sample = render_sample(spec.name, defect, seed, index, split, image_size, ctx)
                _save_png(sample.image, image_dir / f"{index:03d}.png")
                if defect != "good":
                    _save_png(sample.mask.astype(np.uint8) * BYTE_MAX, mask_dir / f"{index:03d}_mask.png")
        counts[spec.name] = {"train": train_per_category, "test_good": test_good,
                             **{defect: test_per_defect for defect in spec.defects}}
    metadata = {"name": "maae embedded data set", "version": EMBEDDED_VERSION, "seed": seed,
                "image_size": image_size, "categories": counts}
    (out_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return list(CATEGORY_NAMES)


def embedded_cache_base() -> Path:
    """Where generated embedded sets are kept: ``$MAAE_DATA_CACHE`` or ``~/.cache/maae-study/data``."""
    configured = os.environ.get(DATA_CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "maae-study" / "data"


def embedded_data_root(seed: int = 0) -> Path:
    """The embedded data set for ``seed``, generated on first use into a versioned cache folder.

    Generation goes to a temporary sibling folder that is renamed into place when complete, under an
    exclusive lock, so concurrent processes (Ray workers) generate it once and never see half a set.
    """
    base = embedded_cache_base()
    final = base / f"embedded-{EMBEDDED_VERSION}-seed{seed}"
    if final.is_dir():
        return final
    try:
        base.mkdir(parents=True, exist_ok=True)
        lock = open(base / f".{final.name}.lock", "a+")  # noqa: SIM115 - held across the generation below
    except OSError as error:
        raise DataError(f"{base}: cannot write the embedded data cache ({error}); set {DATA_CACHE_ENV} "
                        "to a writable folder") from error
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if final.is_dir():  # another process finished while this one waited
                return final
            for stale in base.glob(f".{final.name}.tmp-*"):  # left by a process killed mid-generation
                shutil.rmtree(stale, ignore_errors=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=base))
            try:
                generate_dataset(staging, seed)
                os.rename(staging, final)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return final
