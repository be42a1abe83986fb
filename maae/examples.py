"""Example pictures of a trained run: a few test images per category with mask and heatmap overlay.

Reports embed these; they are computed from the saved checkpoint, so any run folder (a plain training run
or a study's best trial) can have them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from maae.backbone import build_backbone
from maae.checkpoint import load_run
from maae.data import list_samples, load_image, load_mask, resolve_categories
from maae.engine import default_device
from maae.io import write_csv_atomic
from maae.model import build_anomaly_map_generator, image_scores
from maae.predict import HEAT_CEILING_FACTOR
from maae.visualize import overlay, save_png, scale_map

EXAMPLE_COLUMNS = ("category", "path", "defect", "label", "score", "image", "mask", "heatmap")


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
    """Write ``image``/``mask``/``heatmap`` PNGs and ``examples.csv`` for ``per_category`` test images each."""
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
        for index, sample in enumerate(_pick(list_samples(Path(data_root), category, "test"), per_category, rng)):
            pixels = load_image(sample.image_path, config.image_size)
            batch = torch.from_numpy(pixels).permute(2, 0, 1)[None].to(device)
            with torch.no_grad():
                output = model(backbone(batch))
                anomaly_map = generator(output.reconstruction, output.target)
            score = float(image_scores(anomaly_map, config.image_score, config.image_score_topk)[0])
            anomaly_map = anomaly_map[0].cpu().numpy()
            ceiling = reference.get("score_p99")
            high = HEAT_CEILING_FACTOR * ceiling if ceiling else float(anomaly_map.max())
            stem = f"{category}/{index:02d}_{sample.defect}_{sample.image_path.stem}"
            names = {kind: f"{stem}_{kind}.png" for kind in ("image", "mask", "heatmap")}
            save_png(out_dir / names["image"], pixels)
            save_png(out_dir / names["mask"], load_mask(sample.mask_path, config.image_size) * 255)
            save_png(out_dir / names["heatmap"],
                     overlay(pixels, scale_map(anomaly_map, reference.get("map_median", 0.0), high)))
            rows.append({"category": category, "path": str(sample.image_path), "defect": sample.defect,
                         "label": sample.label, "score": score, **names})
    frame = pd.DataFrame(rows, columns=EXAMPLE_COLUMNS)
    write_csv_atomic(out_dir / "examples.csv", frame)
    return frame
