"""Torch's global random generators, held per training session, so that several sessions can share a process.

A :class:`~maae.engine.TrainingSession` draws its noise (ANG's ε, feature jitter, dropout) and each epoch's
data-loader seed from torch's *global* generators, and saves them in its checkpoint. Two sessions trained in
turn in one process (a study trial that trains one configuration with several seeds) would otherwise share
one stream: each seed's noise would depend on how many other seeds ran before it. A :class:`RandomStream`
keeps one session's share of the global state and swaps it in only while that session works, so every
session draws exactly what it would draw alone (``python -m maae train`` with the same seed), and a
checkpoint written inside :meth:`RandomStream.active` holds that session's own state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def _capture(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


class RandomStream:
    """One session's state of torch's global generators (CPU, and the CUDA device's when it trains there).

    Create it right after the session is built (which seeds the global generators from its config) or has
    loaded a checkpoint (which restores them); from then on, run everything that draws random numbers or
    saves the session's state inside :meth:`active`.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._state = _capture(device)

    @contextmanager
    def active(self) -> Iterator[None]:
        """Swap this stream's state in; on exit keep what it became and put the previous state back."""
        outer = _capture(self.device)
        _restore(self._state, self.device)
        try:
            yield
        finally:
            self._state = _capture(self.device)
            _restore(outer, self.device)


__all__ = ["RandomStream"]
