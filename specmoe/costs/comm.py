"""Collective costs between GPUs: the all-to-all of expert parallelism and TP all-reduce/gather.

A collective step on one GPU costs a fixed latency plus its bytes over the GPU's port:
    t = latency + max(bytes over NVLink/PCIe / (bw_intra · η), bytes over the NIC / (bw_net · η))
(intra-node and inter-node traffic move at once on different ports; the slower one sets the
time). An all-to-all ends when its busiest GPU does, so callers pass the busiest GPU's bytes.

Parameters are the profiles' datasheet numbers and assumed latencies, η = 1: UNCALIBRATED.
`CommParams` is the hook for calibration: η and latency per interconnect kind can be fitted from
measured all-to-all / NCCL rows (aiconfigurator-core, imported into specmoe.trace/1 by the
measured-kernels importer) exactly like the per-op parameters in `ops.CostParams`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specmoe.errors import SpecMoEError

GB = 1e9
US = 1e-6


@dataclass(frozen=True)
class CommParams:
    """Efficiency (fraction of payload bandwidth) and latency override per interconnect kind."""

    intra_eff: float = 1.0
    net_eff: float = 1.0
    intra_latency_us: float | None = None  # None = the interconnect profile's latency_us
    net_latency_us: float | None = None


class CommModel:
    """Collective times on one multi-GPU system (seconds; arrays or scalars in, arrays out)."""

    def __init__(self, system, params: CommParams | None = None):
        self.system, self.p = system, params or CommParams()
        self.gpus_per_node = system.gpus_per_node
        ic, net = system.interconnect, system.network
        if system.gpu_count > 1 and ic is None and self.gpus_per_node > 1:
            raise SpecMoEError(
                f"hardware {system.name}: gpu_count={system.gpu_count} but no "
                "'interconnect' between its GPUs; add one (e.g. nvlink4-h100)"
            )
        self.intra_bw = (ic.bw_gbps * GB * self.p.intra_eff) if ic else np.inf
        self.intra_lat = _lat(self.p.intra_latency_us, ic)
        self.net_bw = (net.bw_gbps * GB * self.p.net_eff) if net else np.inf
        self.net_lat = _lat(self.p.net_latency_us, net)

    def off_node_share(self, group: int) -> float:
        """Share of a GPU's peers in a group of `group` GPUs (packed onto nodes) on other nodes."""
        if group <= 1:
            return 0.0
        on_node_peers = min(group, self.gpus_per_node) - 1
        return (group - 1 - on_node_peers) / (group - 1)

    def step(self, nbytes, group: int):
        """One collective step moving `nbytes` (per GPU, busiest direction) spread evenly over the
        peers of a `group`-GPU group: latency + the slower of the intra and inter-node shares."""
        if group <= 1:
            return np.zeros_like(np.asarray(nbytes, dtype=float))
        nbytes = np.asarray(nbytes, dtype=float)
        off = self.off_node_share(group)
        latency = self.net_lat if off > 0 else self.intra_lat
        t = np.maximum(nbytes * (1 - off) / self.intra_bw, nbytes * off / self.net_bw)
        return latency + t

    def all_to_all(self, send_bytes, recv_bytes, group: int):
        """Dispatch (or combine) of an all-to-all: the busiest GPU's sent or received bytes."""
        return self.step(np.maximum(send_bytes, recv_bytes), group)

    def all_reduce(self, nbytes, group: int):
        """Ring all-reduce of `nbytes` per GPU: 2(g−1)/g of them cross each GPU's port."""
        g = max(group, 1)
        return self.step(2.0 * (g - 1) / g * np.asarray(nbytes, dtype=float), g)

    def all_gather(self, nbytes, group: int):
        """All-gather of a `nbytes` result of which each GPU holds 1/g: (g−1)/g crosses its port."""
        g = max(group, 1)
        return self.step((g - 1) / g * np.asarray(nbytes, dtype=float), g)


def _lat(override, interconnect) -> float:
    if override is not None:
        return override * US
    return interconnect.latency_us * US if interconnect is not None else 0.0
