"""The MAAE network: feature fusion, noise generators, mixed-attention auto encoder, anomaly map."""

from maae.model.anomaly_map import AnomalyMapGenerator, build_anomaly_map_generator, image_scores
from maae.model.torch_model import MAAEModel, build_model

__all__ = ["AnomalyMapGenerator", "MAAEModel", "build_anomaly_map_generator", "build_model", "image_scores"]
