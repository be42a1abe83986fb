"""Running a trained model on new images: scores, verdicts, readable overlays, defect masks, and a CSV (how a
study's winner deploys).

The model runs as one :class:`ScoringGraph`: frozen backbone, feature merge, auto encoder, anomaly map and
image score, from an image batch (``B x 3 x S x S`` float RGB in [0, 1]) to maps and scores. ``predict
--checkpoint`` runs it in PyTorch; ``python -m maae export`` writes the same graph to ONNX or TorchScript and
``predict --model`` runs that file (:mod:`maae.export`). Both go through :func:`predict_images`, so the
preprocessing (:func:`maae.data.decode_image`: decode, convert to 8-bit RGB, PIL bilinear resize to S x S,
divide by 255), the overlays and ``predictions.csv`` are the same.

A calibrated run (:mod:`maae.calibration`) carries an image and a pixel threshold in its normal reference (an
exported file carries the same reference): ``normalised_score`` is the score over the image threshold (1.0 is
the threshold), ``is_anomalous`` says whether it is above, and the defect mask is the anomaly map above the
pixel threshold, at the source image's resolution. A unified model judges with the thresholds of the images'
category when ``category`` is given (``--category``), else with those pooled over its categories. A run
without thresholds gets scores only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from maae.backbone import FrozenBackbone, backbone_fingerprint, build_backbone
from maae.calibration import PER_CATEGORY_KEY, Thresholds
from maae.checkpoint import LoadedRun
from maae.data import IMAGE_EXTENSIONS, decode_image
from maae.errors import MAAEError
from maae.io import write_csv_atomic
from maae.model import MAAEModel, build_anomaly_map_generator, image_scores
from maae.visualize import MAX_8BIT, overlay_panels, resize_map, save_png

# One row per image: its score, the score over the image threshold, the verdict, and the two pictures (paths
# relative to the output folder). Without calibrated thresholds the middle columns and ``mask`` are empty.
PREDICTION_COLUMNS = ("path", "model", "score", "normalised_score", "is_anomalous", "heatmap", "mask")
PREDICTIONS_FILE = "predictions.csv"
HEATMAP_FOLDER = "heatmaps"
MASK_FOLDER = "masks"
# An anomaly map at twice the highest score seen on normal training images is drawn at full heat.
HEAT_CEILING_FACTOR = 2.0
# Keys of a model's normal reference (written when a run finishes): the median anomaly-map value on normal
# training images (drawn as the coldest colour) and the 99th percentile of their image scores (the heat scale's
# unit); a calibrated run's thresholds sit beside them (maae.calibration.CALIBRATION_KEYS: the pixel threshold's
# map region is the predicted mask, outlined in the overlay and written as a binary PNG).
MAP_MEDIAN_KEY = "map_median"
SCORE_CEILING_KEY = "score_p99"


def collect_images(inputs: Sequence[Path]) -> list[Path]:
    """Image files given directly or found (recursively, sorted) in given folders."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found.extend(sorted(p for p in item.rglob("*")
                                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                                and not p.stem.endswith("_mask")))
        elif item.is_file():
            if item.suffix.lower() not in IMAGE_EXTENSIONS:
                raise MAAEError(f"{item}: not an image (expected one of {', '.join(IMAGE_EXTENSIONS)})")
            found.append(item)
        else:
            raise MAAEError(f"{item}: no such image file or folder")
    if not found:
        raise MAAEError(f"no images found in {', '.join(map(str, inputs))}")
    return found


class ScoringGraph(nn.Module):
    """Backbone, merge, auto encoder, anomaly map and image score as one module (what an export holds).

    ``forward(images)`` takes ``B x 3 x S x S`` float RGB in [0, 1] (the backbone's ImageNet normalisation is
    inside) and returns ``(maps, scores)``: ``B x S x S`` anomaly maps and ``B`` image scores.
    """

    def __init__(self, backbone: FrozenBackbone, model: MAAEModel, generator: nn.Module, *,
                 image_score: str, image_score_topk: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.model = model
        self.generator = generator
        self.image_score = image_score
        self.image_score_topk = image_score_topk

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.model(self.backbone(images))
        maps = self.generator(output.reconstruction, output.target)
        return maps, image_scores(maps, self.image_score, self.image_score_topk)


def build_scoring_graph(run: LoadedRun, key: str, device: torch.device | None = None) -> ScoringGraph:
    """The scoring graph of the run's model ``key``, in eval mode; the backbone must be the one it was trained
    with (same weights fingerprint), else a one-line error."""
    config = run.config
    device = device or torch.device("cpu")
    fingerprint = backbone_fingerprint(config.backbone, config.backbone_weights)
    if run.backbone_fingerprint and fingerprint != run.backbone_fingerprint:
        raise MAAEError(f"{run.path}: trained with backbone weights {run.backbone_fingerprint}, "
                        f"but {fingerprint} resolved here")
    backbone = build_backbone(config.backbone, config.backbone_weights)
    graph = ScoringGraph(backbone, run.models[key], build_anomaly_map_generator(config),
                         image_score=config.image_score, image_score_topk=config.image_score_topk)
    return graph.to(device).eval()


class Scorer(Protocol):
    """Anything that turns a preprocessed batch into maps and scores: the PyTorch graph or an exported file."""

    image_size: int
    model_key: str
    reference: Mapping[str, float]
    batch_size: int

    def score(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``B x 3 x S x S`` float32 in [0, 1] -> (``B x S x S`` maps, ``B`` scores), float32 arrays."""
        ...


@dataclass
class CheckpointScorer:
    """A run's model, run eagerly in PyTorch."""

    graph: ScoringGraph
    image_size: int
    model_key: str
    batch_size: int
    device: torch.device
    reference: Mapping[str, float] = field(default_factory=dict)

    def score(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            maps, scores = self.graph(torch.from_numpy(images).to(self.device))
        return maps.float().cpu().numpy(), scores.float().cpu().numpy()


def checkpoint_scorer(run: LoadedRun, *, category: str | None = None, device: torch.device | None = None,
                      batch_size: int | None = None) -> CheckpointScorer:
    """The scorer of a loaded run (``category`` picks the model of a separate-paradigm run)."""
    device = device or torch.device("cpu")
    key = run.model_key(category)
    return CheckpointScorer(build_scoring_graph(run, key, device), run.config.image_size, key,
                            batch_size or run.config.eval_batch_size, device, run.normal_reference.get(key, {}))


def scorer_thresholds(scorer: Scorer, category: str | None = None) -> Thresholds | None:
    """The scorer's calibrated thresholds (``category``'s own when it has them, else pooled), or None when its
    run was not calibrated. A ``category`` the model was not calibrated on is a one-line error."""
    own = scorer.reference.get(PER_CATEGORY_KEY, {})
    if category is not None and own and category not in own:
        raise MAAEError(f"--category: {category!r} is not a category of this model; expected one of: "
                        f"{', '.join(own)}")
    return Thresholds.from_reference(scorer.reference, category)


def predict_images(scorer: Scorer, images: Sequence[Path], out_dir: Path, *,
                   category: str | None = None) -> pd.DataFrame:
    """Score ``images``; write per image an overlay PNG under ``heatmaps/`` and, when the run is calibrated, a
    binary defect mask PNG under ``masks/`` (white: above the pixel threshold); then ``predictions.csv``.

    Overlays and masks are at each source image's resolution (:func:`maae.visualize.overlay_panels`; the map
    is resized bilinearly before it is thresholded); the map is coloured from the normal reference's median
    map value to twice its score ceiling (the image's own maximum when the run has no reference). ``category``
    chooses the thresholds (:func:`scorer_thresholds`).
    """
    out_dir = Path(out_dir)
    reference = dict(scorer.reference)
    low = reference.get(MAP_MEDIAN_KEY, 0.0)
    ceiling = reference.get(SCORE_CEILING_KEY)
    thresholds = scorer_thresholds(scorer, category)
    rows = []
    for start in range(0, len(images), scorer.batch_size):
        chunk = [decode_image(path) for path in images[start:start + scorer.batch_size]]
        for decoded in chunk:
            decoded.warn(scorer.image_size)
        batch = np.stack([decoded.model_input(scorer.image_size) for decoded in chunk]).transpose(0, 3, 1, 2)
        maps, scores = scorer.score(np.ascontiguousarray(batch, dtype=np.float32))
        for offset, decoded in enumerate(chunk):
            anomaly_map = maps[offset]
            score = float(scores[offset])
            high = HEAT_CEILING_FACTOR * ceiling if ceiling else float(anomaly_map.max())
            name = f"{start + offset:05d}_{decoded.path.stem}.png"
            row: dict[str, object] = {"path": str(decoded.path), "model": scorer.model_key, "score": score,
                                      "normalised_score": float("nan"), "is_anomalous": None,
                                      "heatmap": f"{HEATMAP_FOLDER}/{name}", "mask": None}
            masks = {}
            if thresholds is not None:
                defect = thresholds.defect_mask(resize_map(anomaly_map, decoded.size))
                masks["predicted"] = defect
                save_png(out_dir / MASK_FOLDER / name, defect.astype(np.uint8) * int(MAX_8BIT))
                row.update(normalised_score=float(thresholds.normalised(np.array([score]))[0]),
                           is_anomalous=bool(thresholds.is_anomalous(np.array([score]))[0]),
                           mask=f"{MASK_FOLDER}/{name}")
            save_png(out_dir / row["heatmap"], overlay_panels(decoded.source_pixels(), anomaly_map, low, high,
                                                              masks=masks))
            rows.append(row)
    frame = pd.DataFrame(rows, columns=PREDICTION_COLUMNS)
    write_csv_atomic(out_dir / PREDICTIONS_FILE, frame)
    return frame


def predict(
    run: LoadedRun, images: Sequence[Path], out_dir: Path, *, category: str | None = None,
    device: torch.device | None = None, batch_size: int | None = None,
) -> pd.DataFrame:
    """Score ``images`` with the run's model; write ``heatmaps/*.png`` and ``predictions.csv`` to ``out_dir``."""
    scorer = checkpoint_scorer(run, category=category, device=device, batch_size=batch_size)
    return predict_images(scorer, images, out_dir, category=category)
