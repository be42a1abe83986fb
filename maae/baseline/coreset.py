"""Greedy k-center coreset: a subset of the memory bank that covers every patch within a small radius.

Greedy k-center (Gonzalez's farthest-point traversal) repeatedly adds the point farthest from the points
chosen so far. Its coverage radius (the largest distance from any point to its nearest chosen point) is
never more than twice the best radius any subset of the same size achieves, and never grows as points
are added. PatchCore uses it to shrink the memory bank with little loss of nearest-neighbour accuracy.

Distances are computed in a random Gaussian projection of the features when that lowers the dimension
(Johnson-Lindenstrauss: pairwise distances are kept up to a small factor), which makes every step cheaper.
The first point is the one farthest from the mean, so the selection is deterministic; the seed only
draws the projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_CHOSEN = -1.0

@dataclass
class CoresetSelection:
    """Indices of the chosen points, in the order chosen, and the coverage radius after each choice.

    ``radii[i]`` is the largest distance from any point to its nearest point among the first ``i + 1``
    chosen, measured in the (possibly projected) space the selection ran in.
    """

    indices: torch.Tensor
    radii: torch.Tensor


def random_projection(points: torch.Tensor, dim: int, *, seed: int) -> torch.Tensor:
    """``points`` (N x C) times a seeded Gaussian C x ``dim`` matrix scaled by 1/sqrt(dim) (norms kept on
    average); the points themselves when ``dim`` is 0 or not below C."""
    channels = points.shape[1]
    if dim <= 0 or dim >= channels:
        return points
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(channels, dim, generator=generator) / dim ** 0.5
    return points @ matrix.to(device=points.device, dtype=points.dtype)


def greedy_coreset(points: torch.Tensor, size: int, *, projection_dim: int = 0, seed: int = 0) -> CoresetSelection:
    """Choose ``size`` rows of ``points`` (N x C) by greedy k-center; all rows when ``size >= N``.

    Each step costs one matrix-vector product over the (projected) points: the squared distance to the
    newest centre is ``|x|^2 - 2 x.c + |c|^2``, and every point keeps its squared distance to the nearest
    centre so far. Runs on the points' device, without a host round-trip per step.
    """
    count = points.shape[0]
    if size < 1:
        raise ValueError(f"greedy_coreset: size must be >= 1, got {size}")
    space = random_projection(points.float(), projection_dim, seed=seed)
    if size >= count:
        return CoresetSelection(torch.arange(count, device=points.device),
                                torch.zeros(count, device=points.device))
    squared_norms = space.pow(2).sum(dim=1)
    centred = space - space.mean(dim=0, keepdim=True)
    current = centred.pow(2).sum(dim=1).argmax()
    nearest = torch.full((count,), float("inf"), device=space.device)
    indices = torch.empty(size, dtype=torch.long, device=space.device)
    radii = torch.empty(size, device=space.device)
    for step in range(size):
        indices[step] = current
        centre = space[current]
        distance = torch.addmv(squared_norms, space, centre, alpha=-2.0).add_(centre.dot(centre)).clamp_(min=0)
        torch.minimum(nearest, distance, out=nearest)
        # Chosen points are marked below every distance, so none is chosen twice (duplicate patches would
        # otherwise tie with it at zero); the maximum then runs over the points not chosen yet.
        nearest[current] = _CHOSEN
        radius, current = nearest.max(dim=0)
        radii[step] = radius.sqrt()
    return CoresetSelection(indices, radii)
