"""Expert affinity: for each expert, every expert of its layer ordered by L2 distance of weights.

SpecMoE serves a draft token routed to a non-resident expert with the most similar resident one;
"similar" is the L2 distance between the experts' flattened weights (w1 | w3 | w2), computed once,
offline, from the host copies. ||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b, accumulated over column
chunks so a real-shape layer never needs a second copy of its experts in memory.
"""
from __future__ import annotations

import torch

CHUNK = 1 << 22  # columns per chunk (E x 4M x 4 bytes = 128 MiB for E = 8)


def l2_distances(buf: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """buf [E, P] -> [E, E] float64 squared L2 distances."""
    device = torch.device(device or buf.device)
    acc = torch.float64 if device.type == "cpu" else torch.float32
    E, P = buf.shape
    gram = torch.zeros(E, E, dtype=acc, device=device)
    for c in range(0, P, CHUNK):
        part = buf[:, c: c + CHUNK].to(device=device, dtype=acc)
        gram += part @ part.t()
    sq = gram.diagonal()
    d = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(0).double().cpu()
    d.fill_diagonal_(0)
    return d


def affinity_ranking(host: list[torch.Tensor], device: torch.device | str | None = None) -> list[list[list[int]]]:
    """Per layer, per expert: all experts of the layer nearest first (the expert itself first)."""
    out = []
    for buf in host:
        d = l2_distances(buf, device)
        d = d + torch.eye(d.shape[0], dtype=d.dtype) * -1.0  # self strictly first, even on ties
        out.append(torch.argsort(d, dim=1, stable=True).tolist())
    return out


def substitute(rank: list[list[int]], resident: set[int]) -> list[int]:
    """expert -> the resident expert serving it (itself when resident); -1 if none is resident."""
    return [next((c for c in row if c in resident), -1) for row in rank]
