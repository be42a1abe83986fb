"""Exporting a trained model as one graph (ONNX or TorchScript), and running an exported file.

``python -m maae export --checkpoint RUN --format onnx|torchscript --out FILE`` writes the run's
:class:`~maae.predict.ScoringGraph` (frozen backbone, feature merge, auto encoder, anomaly map, image score)
as a single graph, so a production line needs neither the checkpoint nor this package's model code:

- input ``images``: ``N x 3 x S x S`` float32, RGB in [0, 1], any batch size N. The host decodes the image,
  converts it to 8-bit RGB, resizes it to ``S x S`` with PIL's bilinear filter (antialiased when shrinking)
  and divides by 255 (:func:`maae.data.decode_image`, exactly what ``predict --checkpoint`` does). The
  backbone's mean/std normalisation is inside the graph.
- outputs ``anomaly_maps`` (``N x S x S`` float32) and ``scores`` (``N`` float32).

The file carries its metadata inside (ONNX ``metadata_props`` / a TorchScript extra file, key
:data:`METADATA_KEY`, JSON): format version, image size, input convention, normalisation, categories, the
model's normal reference (heat-map scaling and, for a calibrated run, the image and pixel thresholds, so
``predict --model`` gives the checkpoint's verdicts and masks), the checkpoint it came from and the run's
config. It is written atomically, after the exported graph has been run once and checked against
PyTorch (scores within :data:`EXPORT_ATOL` + :data:`EXPORT_RTOL` times their size).

ONNX uses PyTorch's TorchScript-based exporter (``dynamo=False``): in torch 2.14 it needs only the ``onnx``
package and exports the quick preset in seconds, where the ``torch.export`` exporter needs ``onnxscript`` and
took minutes on the same model (same outputs). A separate-paradigm run holds one model per category: export
one with ``--category``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maae.checkpoint import LoadedRun, load_run
from maae.engine import UNIFIED_KEY
from maae.errors import MAAEError
from maae.io import write_bytes_atomic
from maae.predict import ScoringGraph, build_scoring_graph

EXPORT_FORMATS = ("onnx", "torchscript")
EXPORT_FORMAT_VERSION = 1
FILE_SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
METADATA_KEY = "maae_export"
TORCHSCRIPT_METADATA_FILE = f"{METADATA_KEY}.json"
INPUT_NAME = "images"
OUTPUT_NAMES = ("anomaly_maps", "scores")
BATCH_AXIS = "batch"
ONNX_OPSET = 17
# The graph is traced on a batch of this many seeded random images, then checked on a batch of another size
# (a check that the batch axis stays dynamic).
TRACE_BATCH = 2
CHECK_BATCH = 3
TRACE_SEED = 0
# Largest tolerated difference between an exported file's scores and PyTorch's on the check batch, as
# absolute + relative * |score|: float32 rounding grows with the scores' size and with the graph's depth.
EXPORT_ATOL = 1e-4
EXPORT_RTOL = 1e-5
DEPLOY_HINT = "pip install 'maae-study[deploy]'"


# ------------------------------------------------------------------------------------------- writing ---

def _check_writable(out: Path) -> None:
    """Fail early, in one line, when ``out`` cannot be written (before minutes of export)."""
    if out.is_dir():
        raise MAAEError(f"--out {out}: is a folder (expected a file name)")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise MAAEError(f"--out {out}: cannot write there ({error.strerror or error})") from None


def export_metadata(run: LoadedRun, key: str, export_format: str, graph: ScoringGraph) -> dict[str, Any]:
    """What an exported file says about itself (see the module docstring)."""
    config = run.config
    size = config.image_size
    return {
        "format": "maae-export",
        "format_version": EXPORT_FORMAT_VERSION,
        "exported_as": export_format,
        "image_size": size,
        "input": {"name": INPUT_NAME, "shape": [BATCH_AXIS, 3, size, size], "dtype": "float32",
                  "channels": "RGB", "range": [0.0, 1.0],
                  "preprocessing": f"decode, convert to 8-bit RGB, resize to {size}x{size} with PIL bilinear "
                                   "(antialiased), divide by 255"},
        "outputs": {OUTPUT_NAMES[0]: [BATCH_AXIS, size, size], OUTPUT_NAMES[1]: [BATCH_AXIS]},
        "normalisation": {"mean": graph.backbone.pixel_mean.flatten().tolist(),
                          "std": graph.backbone.pixel_std.flatten().tolist(),
                          "applied": "inside the graph, as (x - mean) / std on the [0, 1] input"},
        "categories": list(run.categories),
        "model_key": key,
        "paradigm": config.paradigm,
        "normal_reference": dict(run.normal_reference.get(key, {})),
        "backbone": config.backbone,
        "backbone_fingerprint": run.backbone_fingerprint,
        "checkpoint": {"path": str(run.path), "epoch": run.epoch},
        "config": config.to_dict(),
        "torch_version": torch.__version__,
    }


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Silence what tracing says about code it handles as intended: shape checks that become constants (the
    image size is fixed), and the deprecation notes of the TorchScript-based exporter and of torch.jit in
    torch 2.14 (both still work; every export is run and checked against PyTorch before it is written)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="Constant folding")
        yield


def _example(batch: int, image_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(TRACE_SEED + batch)
    return torch.rand(batch, 3, image_size, image_size, generator=generator)


def _onnx_bytes(graph: torch.nn.Module, example: torch.Tensor, metadata: Mapping[str, Any]) -> bytes:
    try:
        import onnx
    except ImportError:
        raise MAAEError(f"--format onnx: the onnx package is not installed ({DEPLOY_HINT})") from None
    buffer = io.BytesIO()
    dynamic = {name: {0: BATCH_AXIS} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    with _quiet_tracing(), torch.no_grad():
        torch.onnx.export(graph, (example,), buffer, dynamo=False, input_names=[INPUT_NAME],
                          output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic, opset_version=ONNX_OPSET)
    model = onnx.load_from_string(buffer.getvalue())
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata, sort_keys=True)
    return model.SerializeToString()


def _torchscript_bytes(graph: torch.nn.Module, example: torch.Tensor, metadata: Mapping[str, Any]) -> bytes:
    buffer = io.BytesIO()
    with _quiet_tracing(), torch.no_grad():
        traced = torch.jit.trace(graph, (example,), check_trace=False)
        torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_METADATA_FILE: json.dumps(metadata, sort_keys=True)})
    return buffer.getvalue()


@dataclass
class ExportResult:
    """What ``export_run`` wrote, and how closely the file reproduces PyTorch on the check batch."""

    path: Path
    export_format: str
    model_key: str
    max_score_difference: float | None  # None when the runtime to check it is not installed
    max_map_difference: float | None
    metadata: dict[str, Any] = field(repr=False, default_factory=dict)


def export_run(checkpoint: Path, export_format: str, out: Path, *, category: str | None = None) -> ExportResult:
    """Export the run at ``checkpoint`` (a run folder or its checkpoint file) to ``out``.

    Bad input is a one-line :class:`MAAEError`: an unknown format, an unwritable ``out``, a checkpoint of
    another format version, a separate-paradigm run without ``category``.
    """
    if export_format not in EXPORT_FORMATS:
        raise MAAEError(f"--format: unknown export format {export_format!r}; expected one of "
                        f"{', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    if out.suffix.lower() != FILE_SUFFIXES[export_format]:
        raise MAAEError(f"--out {out}: a file of --format {export_format} must end in "
                        f"{FILE_SUFFIXES[export_format]} (predict --model tells the runtime by the suffix)")
    _check_writable(out)
    run = load_run(Path(checkpoint), torch.device("cpu"))
    key = run.model_key(category)
    graph = build_scoring_graph(run, key, torch.device("cpu"))
    metadata = export_metadata(run, key, export_format, graph)
    size = run.config.image_size
    writer = _onnx_bytes if export_format == "onnx" else _torchscript_bytes
    data = writer(graph, _example(TRACE_BATCH, size), metadata)
    check = _example(CHECK_BATCH, size)
    with torch.no_grad():
        expected_maps, expected_scores = (t.numpy() for t in graph(check))
    exported = load_exported_bytes(data, export_format, source=str(out))
    score_diff = map_diff = None
    if exported is not None:
        maps, scores = exported.score(check.numpy())
        score_diff = float(np.abs(scores - expected_scores).max())
        map_diff = float(np.abs(maps - expected_maps).max())
        tolerance = EXPORT_ATOL + EXPORT_RTOL * float(np.abs(expected_scores).max())
        if not score_diff <= tolerance:
            raise RuntimeError(f"exported {export_format} graph differs from PyTorch by {score_diff:.3g} in its "
                               f"scores (tolerance {tolerance:.3g}); not written")
    write_bytes_atomic(out, data)
    return ExportResult(out, export_format, key, score_diff, map_diff, metadata)


# ------------------------------------------------------------------------------------------- reading ---

@dataclass
class ExportedScorer:
    """An exported file, ready to score preprocessed batches (a :class:`maae.predict.Scorer`)."""

    path: str
    metadata: dict[str, Any]
    run_batch: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    batch_size: int

    @property
    def image_size(self) -> int:
        return int(self.metadata["image_size"])

    @property
    def model_key(self) -> str:
        return str(self.metadata["model_key"])

    @property
    def reference(self) -> Mapping[str, float]:
        return self.metadata.get("normal_reference", {})

    def score(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.run_batch(np.ascontiguousarray(images, dtype=np.float32))
        return np.asarray(maps, dtype=np.float32), np.asarray(scores, dtype=np.float32)


def _check_metadata(text: str | None, source: str) -> dict[str, Any]:
    if not text:
        raise MAAEError(f"{source}: no {METADATA_KEY} metadata (not a file written by `python -m maae export`)")
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError:
        raise MAAEError(f"{source}: unreadable {METADATA_KEY} metadata") from None
    version = metadata.get("format_version") if isinstance(metadata, dict) else None
    if version != EXPORT_FORMAT_VERSION:
        raise MAAEError(f"{source}: export format {version!r}; this version of maae reads format "
                        f"{EXPORT_FORMAT_VERSION} (export the checkpoint again)")
    return metadata


def _onnx_scorer(data: bytes | str, source: str) -> ExportedScorer | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    try:
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types for a bad file
        raise MAAEError(f"{source}: not a readable ONNX model ({type(error).__name__})") from None
    metadata = _check_metadata(session.get_modelmeta().custom_metadata_map.get(METADATA_KEY), source)

    def run_batch(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        return maps, scores

    return ExportedScorer(source, metadata, run_batch, _batch_size(metadata))


def _torchscript_scorer(data: bytes | str, source: str) -> ExportedScorer:
    extra = {TORCHSCRIPT_METADATA_FILE: ""}
    handle = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with _quiet_tracing():  # torch.jit.load's deprecation note (see the module docstring)
            module = torch.jit.load(handle, map_location="cpu", _extra_files=extra)
    except Exception as error:  # noqa: BLE001 - torch.jit.load raises RuntimeError and others for a bad file
        raise MAAEError(f"{source}: not a TorchScript export ({type(error).__name__}); a run folder's "
                        "checkpoint.pt goes to --checkpoint, not --model") from None
    metadata = _check_metadata(extra[TORCHSCRIPT_METADATA_FILE], source)
    module.eval()

    def run_batch(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            maps, scores = module(torch.from_numpy(images))
        return maps.numpy(), scores.numpy()

    return ExportedScorer(source, metadata, run_batch, _batch_size(metadata))


def _batch_size(metadata: Mapping[str, Any]) -> int:
    """How many images an exported model scores at once: the run's evaluation batch size."""
    return int(metadata["config"]["eval_batch_size"])


def load_exported_bytes(data: bytes, export_format: str, *, source: str) -> ExportedScorer | None:
    """An in-memory export as a scorer; None for ONNX when onnxruntime is not installed."""
    if export_format == "onnx":
        return _onnx_scorer(data, source)
    return _torchscript_scorer(data, source)


def load_exported(path: Path, *, category: str | None = None, batch_size: int | None = None) -> ExportedScorer:
    """An exported file (``.onnx``: onnxruntime; ``.pt``: torch.jit) as a scorer for
    :func:`maae.predict.predict_images`. Every problem is one line: a missing file, another suffix, onnxruntime
    not installed, a file that is not an export of this format version, a ``category`` that the exported
    per-category model was not trained for (a unified model scores every category, as with --checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise MAAEError(f"--model {path}: no such file")
    suffix = path.suffix.lower()
    formats = {value: name for name, value in FILE_SUFFIXES.items()}
    if suffix not in formats:
        raise MAAEError(f"--model {path}: expected an exported .onnx or .pt file")
    if formats[suffix] == "onnx":
        scorer = _onnx_scorer(str(path), str(path))
        if scorer is None:
            raise MAAEError(f"--model {path}: running an ONNX model needs onnxruntime, which is not installed "
                            f"({DEPLOY_HINT})")
    else:
        scorer = _torchscript_scorer(str(path), str(path))
    if category is not None and scorer.model_key not in (UNIFIED_KEY, category):
        raise MAAEError(f"--category {category}: {path} holds the model of category {scorer.model_key!r}")
    if batch_size:
        scorer.batch_size = batch_size
    return scorer
