"""Exact nearest-neighbour distances to a memory bank, in blocks of bounded size."""

from __future__ import annotations

import math

import torch


def block_shape(num_queries: int, bank_size: int, block_elements: int) -> tuple[int, int]:
    """(query rows, bank rows) of one distance block with at most ``block_elements`` entries.

    Both sides get about the square root of the budget, so each block is a well-shaped matrix product;
    a side smaller than that keeps its size and the other takes the rest.
    """
    side = max(1, math.isqrt(block_elements))
    query_rows = min(num_queries, side)
    bank_rows = min(bank_size, max(1, block_elements // max(1, query_rows)))
    query_rows = min(num_queries, max(1, block_elements // bank_rows))
    return query_rows, bank_rows


def nearest_distances(queries: torch.Tensor, bank: torch.Tensor, *, block_elements: int) -> torch.Tensor:
    """For every row of ``queries`` (Q x C), the Euclidean distance to its nearest row of ``bank`` (M x C).

    ``torch.cdist`` computes one block of at most ``block_elements`` distances at a time and a running
    minimum is kept, so memory stays bounded whatever Q and M are. Runs on the tensors' device.
    """
    if bank.shape[0] == 0:
        raise ValueError("nearest_distances: the memory bank is empty")
    if queries.shape[1] != bank.shape[1]:
        raise ValueError(f"nearest_distances: queries have {queries.shape[1]} dimensions, the bank {bank.shape[1]}")
    query_rows, bank_rows = block_shape(queries.shape[0], bank.shape[0], block_elements)
    nearest = torch.empty(queries.shape[0], dtype=torch.float32, device=queries.device)
    for q_start in range(0, queries.shape[0], query_rows):
        block = queries[q_start:q_start + query_rows].float()
        best = torch.full((block.shape[0],), math.inf, dtype=torch.float32, device=queries.device)
        for b_start in range(0, bank.shape[0], bank_rows):
            distances = torch.cdist(block, bank[b_start:b_start + bank_rows].float())
            torch.minimum(best, distances.amin(dim=1), out=best)
        nearest[q_start:q_start + block.shape[0]] = best
    return nearest
