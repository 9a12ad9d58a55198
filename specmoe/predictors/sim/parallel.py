"""Discrete-event simulator of expert-parallel decoding on several GPUs (SimPy).

The story of one MoE layer, for every GPU at once:
  each GPU runs its attention (and router) on its compute stream; the all-to-all dispatch starts
  when all have finished (a collective): after a fixed latency every GPU's sent bytes hold its
  egress port and its received bytes its ingress port, split between the node's NVLink/PCIe port
  and the NIC by where the peers are; each GPU then computes its experts (fetching missing ones
  over its host link first); the combine mirrors the dispatch; a TP group then gathers the output.
With `overlap`, the communication chain runs beside the compute chain (ideal two-micro-batch
overlap: the layer ends when both have).

Per-op times come from the same `costs` (`CostModel`, `CommModel`) and per-GPU loads as the
analytic `ParallelModel`. Expected mode (sample=False) feeds the expected loads: it must agree
with the analytic model. Sampled mode draws every token's experts (the simulator's
RoutingSampler, exact inclusion probabilities) and owner per layer and step, so the busiest GPU's
load varies around its mean and the max over GPUs exceeds the max of the means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import simpy

from specmoe.errors import SpecMoEError
from specmoe.predictors.parallel import Loads, Parallel, ParallelModel, place
from specmoe.predictors.sim.routing import RoutingSampler


@dataclass
class ParallelSimResult:
    iteration_s: float
    tokens_per_s: float
    a2a_bytes_per_layer: float  # all GPUs, dispatch + combine, mean over layers and steps
    busiest_pairs_per_layer: float  # mean over layers of the busiest GPU's token-expert pairs
    events: int


class _Gpu:
    """One GPU: a compute stream and the two directions of its intra-node port and its NIC."""

    def __init__(self, env):
        self.compute = simpy.Resource(env, 1)
        self.out, self.inp = simpy.Resource(env, 1), simpy.Resource(env, 1)
        self.nic_out, self.nic_in = simpy.Resource(env, 1), simpy.Resource(env, 1)


def _hold(env, resource, seconds):
    if seconds <= 0:
        return
    with resource.request() as req:
        yield req
        yield env.timeout(seconds)


class ParallelSim:
    def __init__(self, pm: ParallelModel, par: Parallel, sample: bool = False, seed: int = 0):
        par.check(pm.gpus, pm.model)
        if sample and par.colocation is not None:
            raise SpecMoEError(
                "colocation: the sampled simulator draws experts independently; "
                "leave colocation unset (None) or use sample=False"
            )
        self.pm, self.par, self.sample = pm, par, sample
        self.rng = np.random.default_rng(seed)
        self.G, self.m = pm.gpus, pm.model
        self.env = simpy.Environment()
        self.gpus = [_Gpu(self.env) for _ in range(self.G)]
        self.off = pm.comm.off_node_share(par.ep)
        self.events = 0
        self.samplers: dict[bytes, RoutingSampler] = {}

    # ---- loads of one layer ------------------------------------------------------------------
    def _expected(self, batch, row, resident) -> Loads:
        loads = self.pm.loads(self.par, [batch], row, np.array([resident]))
        idx = np.arange(self.G) % self.par.ep  # every EP group alike
        return Loads(
            *(getattr(loads, f)[:, idx] for f in ("pairs", "distinct", "missing", "send", "recv"))
        )

    def _sampled(self, batch, row, resident) -> Loads:
        m, par, G, rng = self.m, self.par, self.G, self.rng
        T, E, k, ep = int(batch), m.num_experts, m.top_k, par.ep
        key = row.tobytes()
        if key not in self.samplers:
            self.samplers[key] = RoutingSampler(row[None, :], k, 0.0, T, rng)
        sampler = self.samplers[key]
        _, pats = sampler.sample(np.arange(T), 1)
        experts = sampler.patterns[pats[0, :, 0]]  # [T, k]
        first = experts[:, 0]  # the predicted one
        gpu_of = place(row, ep, par.placement)
        owner = np.arange(T) % G  # token owner GPU
        group = owner // ep
        moved = rng.random(T) < par.q()
        owner = np.where(moved, group * ep + gpu_of[first], owner)
        dest = group[:, None] * ep + gpu_of[experts]  # [T, k] GPU of each pair
        remote = dest != owner[:, None]
        pairs = np.bincount(dest.ravel(), minlength=G).astype(float)
        send = np.bincount(np.repeat(owner, k)[remote.ravel()], minlength=G).astype(float)
        recv = np.bincount(dest[remote], minlength=G).astype(float)
        distinct, missing = np.zeros(G), np.zeros(G)
        rank_on_gpu = np.zeros(E, dtype=int)
        for g in range(ep):
            mine = np.flatnonzero(gpu_of == g)
            rank_on_gpu[mine] = np.arange(len(mine))  # hottest first
        for grp in range(G // ep):
            sel = group == grp
            used = np.zeros((ep, E), dtype=bool)
            used[gpu_of[experts[sel]].ravel(), experts[sel].ravel()] = True
            for g in range(ep):
                distinct[grp * ep + g] = used[g].sum()
                missing[grp * ep + g] = (used[g] & (rank_on_gpu >= resident)).sum()
        return Loads(*(x[None, :] for x in (pairs, distinct, missing, send, recv)))

    # ---- processes -----------------------------------------------------------------------------
    def _compute(self, g, seconds):
        self.events += 1
        yield from _hold(self.env, self.gpus[g].compute, float(seconds))

    def _port(self, res, nbytes, bw):
        self.events += 1
        yield from _hold(self.env, res, float(nbytes) / bw if nbytes > 0 else 0.0)

    def _all_to_all(self, send_bytes, recv_bytes):
        """One all-to-all: latency, then every port busy for its bytes; ends with the busiest."""
        comm, env = self.pm.comm, self.env
        if self.par.ep <= 1:
            return
        yield env.timeout(comm.net_lat if self.off > 0 else comm.intra_lat)
        procs = []
        for g, gpu in enumerate(self.gpus):
            for res, nbytes in ((gpu.out, send_bytes[g]), (gpu.inp, recv_bytes[g])):
                procs.append(env.process(self._port(res, nbytes * (1 - self.off), comm.intra_bw)))
            for res, nbytes in ((gpu.nic_out, send_bytes[g]), (gpu.nic_in, recv_bytes[g])):
                procs.append(env.process(self._port(res, nbytes * self.off, comm.net_bw)))
        yield simpy.AllOf(env, procs)

    def _layer(self, loads: Loads, attn_s, router_s, reduce_s, gather_s):
        env, G = self.env, self.G
        expert_s = self.pm.expert_s(loads)[0]
        nbytes = self.m.hidden_size * self.m.dtype_bytes
        send, recv = loads.send[0] * nbytes, loads.recv[0] * nbytes

        def compute_chain():
            yield simpy.AllOf(
                env, [env.process(self._compute(g, attn_s + router_s)) for g in range(G)]
            )
            if not self.par.overlap:
                yield from self._all_to_all(send, recv)
            yield simpy.AllOf(env, [env.process(self._compute(g, expert_s[g])) for g in range(G)])

        def comm_chain():
            yield from self._all_to_all(send, recv)  # dispatch
            yield from self._all_to_all(recv, send)  # combine

        if self.par.overlap:
            yield simpy.AllOf(env, [env.process(compute_chain()), env.process(comm_chain())])
        else:
            yield env.process(compute_chain())
            yield from self._all_to_all(recv, send)  # combine
        yield env.timeout(reduce_s + gather_s)  # TP all-reduce and all-gather

    def _step(self, batch, resident, out):
        pm, m, par = self.pm, self.m, self.par
        attn, reduce_s, gather_s = (
            float(np.ravel(x)[0]) for x in pm.nonmoe_layer_s(par, np.array([batch]))
        )
        router = float(pm.costs.router_and_shared(batch / (self.G // par.tp)) / par.tp)
        rows = pm.rows[
            np.repeat(
                np.arange(len(pm.rows)), np.round(pm.row_weights * m.num_moe_layers).astype(int)
            )
        ]
        for row in rows:
            loads = (self._sampled if self.sample else self._expected)(batch, row, resident)
            out["bytes"].append(2 * loads.send.sum() * m.hidden_size * m.dtype_bytes)
            out["busiest"].append(loads.pairs.max())
            yield self.env.process(self._layer(loads, attn, router, reduce_s, gather_s))
        yield self.env.timeout(float(np.ravel(pm._dense_rest(par, np.array([batch])))[0]))

    def run(self, batch: int, steps: int = 3) -> ParallelSimResult:
        resident = int(self.pm.resident(self.par, np.array([float(batch)]))[0][0])
        out = {"bytes": [], "busiest": []}

        def loop():
            for _ in range(steps):
                yield self.env.process(self._step(batch, resident, out))

        self.env.process(loop())
        self.env.run()
        it = self.env.now / steps
        return ParallelSimResult(
            it,
            batch / it,
            float(np.mean(out["bytes"])),
            float(np.mean(out["busiest"])),
            self.events,
        )


def simulate_parallel(
    pm: ParallelModel,
    par: Parallel,
    batch: int,
    steps: int = 3,
    sample: bool = False,
    seed: int = 0,
) -> ParallelSimResult:
    return ParallelSim(pm, par, sample, seed).run(batch, steps)
