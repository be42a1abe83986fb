"""The training engine around the model: data preparation, shuffling, exact resume, and DDP agreement."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from maae.config import MAAEConfig
from maae.engine import (
    UNIFIED_KEY,
    NonFiniteLossError,
    TrainingSession,
    build_optimizers,
    default_device,
    prepare_data,
    train_step,
)
from maae.model import build_model

CATEGORIES = ["grass", "hex_nut"]


def tiny_run_config(overrides: list[str], **changes) -> MAAEConfig:
    values = dict(item.split("=", 1) for item in overrides)
    return MAAEConfig.from_dict({**values, **changes}, source="test")


def _weights(session: TrainingSession) -> dict[str, torch.Tensor]:
    """The trained weights and the evaluated ones (the moving average when on), by prefixed name."""
    trained = session.core_model(UNIFIED_KEY).state_dict()
    evaluated = session.evaluation_models()[UNIFIED_KEY].state_dict()
    return {**{f"trained.{name}": tensor.clone() for name, tensor in trained.items()},
            **{f"evaluated.{name}": tensor.clone() for name, tensor in evaluated.items()}}


@pytest.mark.parametrize("changes", [
    {"lr_schedule": "constant"},
    {"lr_schedule": "cosine"},
    {"lr_schedule": "cosine", "warmup_epochs": 1, "ema_decay": 0.9, "ang_lr": 5e-3},
], ids=["constant", "cosine", "warmup-ema"])
def test_resumed_session_repeats_the_uninterrupted_run(tiny_data: Path, tiny_overrides: list[str], tmp_path: Path,
                                                       changes: dict):
    """A run stopped after epoch 1 and resumed from its checkpoint ends with the same weights as one that
    never stopped: shuffling order, the noise generators, the learning-rate schedule and the moving average
    of the weights continue where they were."""
    config = tiny_run_config(tiny_overrides, epochs=3, **changes)
    device = default_device()
    data = prepare_data(config, tiny_data, CATEGORIES, device=device)

    straight = TrainingSession(config, data, device=device)
    for _ in range(3):
        straight.train_epoch()

    first = TrainingSession(config, data, device=device)
    first.train_epoch()
    torch.save(first.state_dict(), tmp_path / "state.pt")
    torch.manual_seed(12345)  # a new process would start from other generator states
    resumed = TrainingSession(config, data, device=device)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    resumed.train_epoch()
    resumed.train_epoch()

    expected, got = _weights(straight), _weights(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_cosine_schedule_decays_both_learning_rates_to_zero(tiny_data: Path, tiny_overrides: list[str]):
    config = tiny_run_config(tiny_overrides, epochs=4, lr_schedule="cosine", lr=1e-3)
    device = default_device()
    session = TrainingSession(config, prepare_data(config, tiny_data, CATEGORIES, device=device), device=device)
    optimizers = session.optimizers[UNIFIED_KEY]
    for epoch in range(1, config.epochs + 1):
        session.train_epoch()
        expected = config.lr * (1 + math.cos(math.pi * epoch / config.epochs)) / 2
        for optimizer in (optimizers.model, optimizers.noise):
            assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12)
    # The default keeps the paper's constant rate.
    constant = TrainingSession(config.replace(lr_schedule="constant"), session.data, device=device)
    constant.train_epoch()
    assert constant.optimizers[UNIFIED_KEY].model.param_groups[0]["lr"] == config.lr


def test_prepare_data_builds_no_backbone_when_every_feature_is_cached(tiny_data: Path, tiny_overrides: list[str]):
    config = tiny_run_config(tiny_overrides)
    device = default_device()
    first = prepare_data(config, tiny_data, CATEGORIES, device=device)  # fills the cache if needed
    again = prepare_data(config, tiny_data, CATEGORIES, device=device)
    assert not again.backbone_source.built
    assert again.stage_channels == first.stage_channels == tuple(first.backbone.channels)
    # Without the cache the backbone is needed, and built.
    live = prepare_data(config.replace(feature_cache=False), tiny_data, CATEGORIES, device=device)
    assert live.backbone_source.built


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_one_rank_process_group_shuffles_like_plain_python(tiny_data: Path, tiny_overrides: list[str]):
    """A one-worker Ray trial runs under an initialised process group; it must see the plain run's order."""
    config = tiny_run_config(tiny_overrides)
    device = default_device()
    data = prepare_data(config, tiny_data, CATEGORIES, device=device)
    plain = [batch[0].clone() for batch in TrainingSession(config, data, device=device).loaders[UNIFIED_KEY]]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        grouped = [batch[0].clone() for batch in TrainingSession(config, data, device=device).loaders[UNIFIED_KEY]]
    finally:
        dist.destroy_process_group()
    assert len(plain) == len(grouped)
    assert all(torch.equal(a, b) for a, b in zip(plain, grouped, strict=True))


STAGE_CHANNELS = (4, 6, 8, 10)


def _nan_on_rank_one(rank: int, world_size: int, port: int, outcomes: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        config = MAAEConfig(hidden_dim=16, num_heads=2, depth=2, residual_every=1, dilation=1, image_size=64,
                            batch_size=2, epochs=1)
        model = torch.nn.parallel.DistributedDataParallel(build_model(config, STAGE_CHANNELS))
        optimizers = build_optimizers(model, config)
        stages = [torch.randn(2, c, 64 // 2 ** (i + 1), 64 // 2 ** (i + 1)) for i, c in enumerate(STAGE_CHANNELS)]
        if rank == 1:
            stages[0][0, 0, 0, 0] = float("nan")
        try:
            train_step(model, optimizers, stages, config)
            outcomes[rank] = "trained"
        except NonFiniteLossError as error:
            outcomes[rank] = str(error)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_nan_on_one_rank_stops_every_rank_at_the_same_step():
    """Without agreement, rank 0 would wait in DDP's all-reduce for rank 1 until the process-group timeout."""
    with mp.Manager() as manager:
        outcomes = manager.dict()
        mp.spawn(_nan_on_rank_one, args=(2, _free_port(), outcomes), nprocs=2, join=True)
        result = dict(outcomes)
    assert "is nan" in result[1]
    assert "another rank" in result[0]
