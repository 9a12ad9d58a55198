"""Expert affinity: for each expert, every expert of its layer ordered by L2 distance of weights.

SpecMoE serves a draft token routed to a non-resident expert with the most similar resident one;
"similar" is the L2 distance between the experts' flattened weights (w1 | w3 | w2), computed once,
offline, from the host copies. ||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b, accumulated over column
chunks so a real-shape layer never needs a second copy of its experts in memory.

Deterministic across devices: distances accumulate in float64 on every device (a GPU's fp32 sums
differ from a CPU's fp64 ones in the last bits), and distances equal to 1e-9 relative are ties,
broken by the lower expert id. Random weights make many near-ties, so without this a GPU run and
a CPU run would substitute different experts.
"""
from __future__ import annotations

import torch

CHUNK = 1 << 22  # columns per chunk (E x 4M x 8 bytes = 256 MiB for E = 8)
TIE_RTOL = 1e-9  # distances closer than this (relative to the layer's largest) are ties


def l2_distances(buf: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """buf [E, P] -> [E, E] float64 squared L2 distances."""
    device = torch.device(device or buf.device)
    acc = torch.float64
    E, P = buf.shape
    gram = torch.zeros(E, E, dtype=acc, device=device)
    for c in range(0, P, CHUNK):
        part = buf[:, c: c + CHUNK].to(device).to(acc)  # widen where the arithmetic runs
        gram += part @ part.t()
    sq = gram.diagonal()
    d = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(0).double().cpu()
    d.fill_diagonal_(0)
    return d


def affinity_ranking(
    host: list[torch.Tensor], device: torch.device | str | None = None
) -> list[list[list[int]]]:
    """Per layer, per expert: all experts of the layer nearest first (the expert itself first)."""
    out = []
    for buf in host:
        out.append(ranking(l2_distances(buf, device)))
    return out


def ranking(d: torch.Tensor) -> list[list[int]]:
    """[E, E] distances -> per expert, experts nearest first: itself, then by distance rounded to
    TIE_RTOL of the largest, ties by lower id (a stable sort of ids in order)."""
    scale = float(d.max()) or 1.0
    q = torch.round(d.double() / (scale * TIE_RTOL))
    q.fill_diagonal_(-1.0)  # self strictly first
    return torch.argsort(q, dim=1, stable=True).tolist()


def substitute(rank: list[list[int]], resident: set[int]) -> list[int]:
    """expert -> the resident expert serving it (itself when resident); -1 if none is resident."""
    return [next((c for c in row if c in resident), -1) for row in rank]
