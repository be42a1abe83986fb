"""An exponential moving average (EMA) of a model's weights, for evaluation.

The average smooths the step-to-step noise of the trained weights; evaluating it instead of the last step's
weights damps the swings between consecutive evaluations. Only the named trainable weights are averaged;
everything else (normalisation statistics, ANG's W, frozen tensors) is copied from the live model, so the
average is always a complete, consistent model.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

# Early on, the average would be dominated by the random initial weights (with decay 0.999, 1,000 steps
# still leave them a weight of 37%). The effective decay therefore starts low and rises towards the
# configured one: min(decay, (1 + t) / (WARMUP_OFFSET + t)) after t updates (TensorFlow's num_updates rule).
WARMUP_OFFSET = 10


class ModelEma:
    """A frozen copy of ``model`` whose ``averaged`` parameters follow ``ema = d * ema + (1 - d) * live``.

    ``update`` is called after every optimiser step; ``module`` is the averaged model (in eval mode). To resume
    exactly, save ``module``'s state dict and ``updates``, and restore both.
    """

    def __init__(self, model: nn.Module, decay: float, averaged: Iterable[str]) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.averaged = frozenset(averaged)
        unknown = self.averaged - {name for name, _ in model.named_parameters()}
        if unknown:
            raise ValueError(f"not parameters of the model: {sorted(unknown)}")
        self.updates = 0

    def current_decay(self) -> float:
        """The decay the next update applies."""
        return min(self.decay, (1 + self.updates) / (WARMUP_OFFSET + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s weights (same architecture as at construction)."""
        weight = 1 - self.current_decay()
        live = dict(model.named_parameters())
        live.update(model.named_buffers())
        for name, average in [*self.module.named_parameters(), *self.module.named_buffers()]:
            if name in self.averaged:
                average.lerp_(live[name], weight)
            else:
                average.copy_(live[name])
        self.updates += 1
