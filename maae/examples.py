"""Example pictures of a trained run: a few test images per category with mask and heatmap overlay.

Reports embed these; they are computed from the saved checkpoint, so any run folder (a plain training run
or a study's best trial) can have them. Every picture is at the source image's resolution, with the model's
input made exactly as ``predict`` makes it (:func:`maae.data.decode_image`): ``image`` (the original),
``mask`` (the ground truth), ``heatmap`` (the anomaly map, resized to the source, over the original) and
``panels`` (:func:`maae.visualize.overlay_panels`: original, heat map with colour bar, and the outlines of the
ground truth and, for a calibrated run, of the predicted mask, side by side).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from maae.backbone import build_backbone
from maae.calibration import Thresholds
from maae.checkpoint import load_run
from maae.data import decode_image, list_samples, load_mask_at, resolve_categories
from maae.engine import default_device
from maae.io import write_csv_atomic
from maae.model import build_anomaly_map_generator, image_scores
from maae.predict import HEAT_CEILING_FACTOR, MAP_MEDIAN_KEY, SCORE_CEILING_KEY
from maae.visualize import MAX_8BIT, overlay, overlay_panels, resize_map, save_png, scale_map

# normalised_score and is_anomalous are empty for a run without calibrated thresholds.
EXAMPLE_COLUMNS = ("category", "path", "defect", "label", "score", "normalised_score", "is_anomalous", "image",
                   "mask", "heatmap", "panels")
PICTURES = ("image", "mask", "heatmap", "panels")


def _pick(samples: list, per_category: int, rng: np.random.Generator) -> list:
    """One normal image and the rest defective (of as many defect kinds as possible), reproducibly."""
    good = [s for s in samples if s.label == 0]
    defective = [s for s in samples if s.label == 1]
    by_defect: dict[str, list] = {}
    for sample in defective:
        by_defect.setdefault(sample.defect, []).append(sample)
    chosen = [good[rng.integers(len(good))]] if good else []
    kinds = sorted(by_defect)
    while len(chosen) < per_category and any(by_defect.values()):
        for kind in kinds:
            if by_defect[kind] and len(chosen) < per_category:
                chosen.append(by_defect[kind].pop(int(rng.integers(len(by_defect[kind])))))
    return chosen


def write_examples(
    run_dir: Path, data_root: Path, out_dir: Path, *, per_category: int = 3, seed: int = 0,
    device: torch.device | None = None,
) -> pd.DataFrame:
    """Write ``image``/``mask``/``heatmap``/``panels`` PNGs (source resolution) and ``examples.csv`` for
    ``per_category`` test images each."""
    device = device or default_device()
    run = load_run(Path(run_dir), device)
    config = run.config
    backbone = build_backbone(config.backbone, config.backbone_weights).to(device)
    generator = build_anomaly_map_generator(config).to(device)
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    rows = []
    for category in resolve_categories(Path(data_root), run.categories):
        key = run.model_key(category)
        model = run.models[key]
        reference = run.normal_reference.get(key, {})
        thresholds = Thresholds.from_reference(reference, category)
        for index, sample in enumerate(_pick(list_samples(Path(data_root), category, "test"), per_category, rng)):
            decoded = decode_image(sample.image_path)
            decoded.warn(config.image_size)
            pixels = decoded.model_input(config.image_size)
            batch = torch.from_numpy(pixels).permute(2, 0, 1)[None].to(device)
            with torch.no_grad():
                output = model(backbone(batch))
                anomaly_map = generator(output.reconstruction, output.target)
            score = float(image_scores(anomaly_map, config.image_score, config.image_score_topk)[0])
            anomaly_map = anomaly_map[0].cpu().numpy()
            ceiling = reference.get(SCORE_CEILING_KEY)
            low = reference.get(MAP_MEDIAN_KEY, 0.0)
            high = HEAT_CEILING_FACTOR * ceiling if ceiling else float(anomaly_map.max())
            source = decoded.source_pixels()
            width, height = decoded.size
            truth = (np.zeros((height, width), dtype=np.uint8) if sample.mask_path is None
                     else load_mask_at(sample.mask_path, decoded.size))
            source_map = resize_map(anomaly_map, decoded.size)
            masks = {"ground truth": truth}
            verdict: dict[str, object] = {"normalised_score": float("nan"), "is_anomalous": None}
            if thresholds is not None:
                masks["predicted"] = thresholds.defect_mask(source_map)
                verdict = {"normalised_score": float(thresholds.normalised(np.array([score]))[0]),
                           "is_anomalous": bool(thresholds.is_anomalous(np.array([score]))[0])}
            stem = f"{category}/{index:02d}_{sample.defect}_{sample.image_path.stem}"
            names = {kind: f"{stem}_{kind}.png" for kind in PICTURES}
            save_png(out_dir / names["image"], source)
            save_png(out_dir / names["mask"], truth * int(MAX_8BIT))
            save_png(out_dir / names["heatmap"], overlay(source, scale_map(source_map, low, high)))
            save_png(out_dir / names["panels"], overlay_panels(source, anomaly_map, low, high, masks=masks))
            rows.append({"category": category, "path": str(sample.image_path), "defect": sample.defect,
                         "label": sample.label, "score": score, **verdict, **names})
    frame = pd.DataFrame(rows, columns=EXAMPLE_COLUMNS)
    write_csv_atomic(out_dir / "examples.csv", frame)
    return frame
