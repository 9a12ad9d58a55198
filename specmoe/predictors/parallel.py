"""Several GPUs: expert parallelism (EP) with tensor/data parallel attention, and Speculative MoE.

Layout (DeepSpeed-MoE / SGLang style) on G GPUs:
- attention and dense parts: TP degree `tp`, DP degree dp = G / tp (each DP group serves B/dp
  sequences; TP splits weights, heads and KV by tp, then all-reduces);
- experts: EP degree `ep`: each group of ep GPUs holds one copy of all E experts (E/ep per GPU;
  G/ep copies). A decode step's T = B tokens are owned T/G per GPU for dispatch; a token-expert
  pair whose expert sits on another GPU of the group crosses the all-to-all, twice (dispatch and
  combine).
Per MoE layer and GPU g (expectations over routing; layers alike, as in `analytic`):
  pairs_g = T_grp · P_g,  P_g = Σ_{e on g} p_e,  T_grp = T · ep / G
  distinct_g = Σ_{e on g} [1 − (1 − p_e)^T_grp]          (weights streamed, U(n) per GPU)
  sent pairs_g = (T/G) · k · (1 − ℓ_send,g),  received pairs_g = pairs_g · (1 − ℓ_recv)
The layer ends when the busiest GPU does (collectives synchronise): load imbalance under skewed
routing is the max over g. Experts that do not fit in a GPU's memory are fetched on demand over
its own host link (its hottest experts stay resident).

Speculative MoE (Li et al., arXiv 2503.04398): speculative token shuffling places a token, with
probability q (the prediction accuracy, a workload parameter), on the GPU that holds its first
expert before the MoE layer (riding on the attention's own collective or request scheduling, so
it costs no extra bytes here); speculative expert grouping raises c, the chance that each of the
token's other k − 1 experts shares that GPU (random placement: c0 = (E/ep − 1)/(E − 1)). Local
share of a token's pairs: ℓ = q · (1 + (k − 1) c) / k + (1 − q) · (baseline locality).
Mispredicted tokens pay the ordinary all-to-all (the fallback transfer). Grouping alone, with
tokens owned at random, does not change the expected locality: it pays through shuffling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from specmoe.costs.comm import CommModel
from specmoe.costs.memory import Memory
from specmoe.costs.ops import CostModel, prediction_costs
from specmoe.errors import SpecMoEError
from specmoe.inputs.workload import Workload

PLACEMENTS = ("round_robin", "greedy")


@dataclass(frozen=True)
class Parallel:
    """Degrees and switches of one multi-GPU configuration."""

    ep: int = 1  # GPUs sharing one copy of the experts
    tp: int = 1  # tensor-parallel degree of attention and dense parts
    overlap: bool = False  # all-to-all overlapped with compute (two micro-batches)
    shuffle: bool = False  # speculative token shuffling
    accuracy: float = 0.0  # q: share of tokens placed on their first expert's GPU
    colocation: float | None = None  # c (expert grouping); None = random placement's c0
    placement: str = "round_robin"  # experts (hottest first) over GPUs: round_robin | greedy

    def check(self, gpus: int, model) -> None:
        for name, d in (("ep", self.ep), ("tp", self.tp)):
            if d < 1 or gpus % d:
                raise SpecMoEError(f"{name}={d}: must divide the GPU count {gpus}")
        if self.ep > model.num_experts:
            raise SpecMoEError(f"ep={self.ep}: at most num_experts={model.num_experts}")
        if self.tp > model.num_heads:
            raise SpecMoEError(f"tp={self.tp}: at most num_heads={model.num_heads}")
        if not 0.0 <= self.accuracy <= 1.0:
            raise SpecMoEError(f"accuracy={self.accuracy}: allowed [0, 1]")
        if self.colocation is not None and not 0.0 <= self.colocation <= 1.0:
            raise SpecMoEError(f"colocation={self.colocation}: allowed [0, 1]")
        if self.placement not in PLACEMENTS:
            raise SpecMoEError(f"placement={self.placement!r}: allowed {PLACEMENTS}")

    def q(self) -> float:
        return self.accuracy if self.shuffle else 0.0

    def c(self, num_experts: int) -> float:
        if self.colocation is not None:
            return self.colocation
        return (num_experts / self.ep - 1) / max(num_experts - 1, 1)


def place(probs: np.ndarray, ep: int, placement: str = "round_robin") -> np.ndarray:
    """GPU index (0..ep−1) of each expert. probs are sorted hottest first.

    round_robin: rank r on GPU r mod ep (ids uncorrelated with load); greedy: hottest expert to
    the least-loaded GPU with room (EPLB-like balancing), E/ep experts per GPU either way.
    """
    E = len(probs)
    if placement == "round_robin":
        return np.arange(E) % ep
    per_gpu, load, count = math.ceil(E / ep), np.zeros(ep), np.zeros(ep, dtype=int)
    out = np.empty(E, dtype=int)
    for e in np.argsort(-probs, kind="stable"):
        free = np.flatnonzero(count < per_gpu)
        g = free[np.argmin(load[free])]
        out[e], load[g], count[g] = g, load[g] + probs[e], count[g] + 1
    return out


@dataclass
class Loads:
    """Per-GPU counts of one MoE layer in one EP group: arrays [configs, ep]."""

    pairs: np.ndarray  # token-expert pairs computed on the GPU
    distinct: np.ndarray  # distinct experts used on the GPU
    missing: np.ndarray  # of them, not resident (fetched from host memory)
    send: np.ndarray  # pairs the GPU sends in the dispatch (receives back in the combine)
    recv: np.ndarray  # pairs the GPU receives in the dispatch


@dataclass
class ParallelResult:
    iteration_s: np.ndarray
    tokens_per_s: np.ndarray
    layer_s: np.ndarray  # one MoE layer, busiest GPU
    a2a_s_per_layer: np.ndarray  # dispatch + combine
    a2a_bytes_per_layer: np.ndarray  # all GPUs, dispatch + combine
    imbalance: np.ndarray  # busiest GPU's pairs / mean pairs
    gpu_memory_bytes: np.ndarray  # per GPU, all its experts resident
    fits: np.ndarray  # everything resident on every GPU
    feasible: np.ndarray  # fits with on-demand offloading of experts
    resident_per_gpu_layer: np.ndarray  # experts per layer resident on each GPU


class ParallelModel:
    """Analytic multi-GPU model for one model × multi-GPU system × workload."""

    def __init__(
        self,
        model,
        system,
        workload: Workload | None = None,
        costs: CostModel | None = None,
        comm: CommModel | None = None,
    ):
        self.model, self.system = model, system
        self.workload = workload or Workload()
        self.costs = costs or prediction_costs(model, system)
        self.comm = comm or CommModel(system)
        self.mem = Memory(model, system, self.workload)
        self.gpus = system.gpu_count
        probs = self.workload.routing.inclusion_probs(
            model.num_experts, model.top_k, model.num_moe_layers
        )
        rows, counts = np.unique(probs, axis=0, return_counts=True)
        self.rows, self.row_weights = rows, counts / counts.sum()

    # ---- per-GPU loads -----------------------------------------------------------------------
    def loads(self, par: Parallel, tokens, row: np.ndarray, resident) -> Loads:
        """Expected loads for token counts `tokens` [n], `resident` experts per GPU [n]."""
        m, G = self.model, self.gpus
        k, E = m.top_k, m.num_experts
        tokens = np.asarray(tokens, dtype=float)[:, None]
        t_grp = tokens * par.ep / G
        gpu_of = place(row, par.ep, par.placement)
        onehot = np.eye(par.ep)[gpu_of]  # [E, ep]
        share = row @ onehot  # P_g [ep]
        used = 1.0 - np.exp(t_grp[..., None] * np.log1p(-np.clip(row, 0, 1 - 1e-15)))  # [n,1,E]
        used = used[:, 0, :]
        distinct = used @ onehot
        missing = self._missing(used, gpu_of, par.ep, np.asarray(resident))
        q, c = par.q(), par.c(E)
        hit = q * (1 + (k - 1) * c) / k
        send = tokens / G * k * np.clip(1 - hit - (1 - q) * share / k, 0, None)
        recv = t_grp * share * np.clip(1 - hit - (1 - q) / par.ep, 0, None)
        if par.ep == 1:
            send, recv = np.zeros_like(send), np.zeros_like(recv)
        return Loads(t_grp * share, distinct, missing, send, recv)

    @staticmethod
    def _missing(used, gpu_of, ep, resident):
        """Used experts beyond each GPU's `resident` hottest ones (probs sorted hottest first)."""
        out = np.zeros(used.shape[:1] + (ep,))
        for g in range(ep):
            mine = used[:, gpu_of == g]  # hottest first
            rank = np.arange(mine.shape[1])[None, :]
            out[:, g] = np.sum(np.where(rank >= resident.reshape(-1, 1), mine, 0.0), axis=1)
        return out

    # ---- times -------------------------------------------------------------------------------
    def nonmoe_layer_s(self, par: Parallel, batch):
        """Attention (+ router, shared experts) of one layer on one GPU, with its TP collective."""
        m, c, ctx = self.model, self.costs, self.workload.mean_context
        dp = self.gpus // par.tp
        t, b = batch / dp, batch / dp
        proj = c.gemm(
            t * m.attn_proj_flops_per_token / par.tp,
            m.attn_weight_bytes_per_layer / par.tp,
            t,
            kernels=2,
        )
        attn = (
            proj
            + c.attention_scores(t / par.tp, b / par.tp, ctx)
            + 2 * c.kernel_t
            + c.layer_fixed()
        )
        act = t * m.hidden_size * m.dtype_bytes
        return attn, self.comm.all_reduce(act, par.tp), self.comm.all_gather(act, par.tp)

    def expert_s(self, loads: Loads):
        """Per-GPU expert time: on-demand fetch of missing experts, then the grouped GEMM."""
        c = self.costs
        return c.expert_fetch(loads.missing) + c.experts(
            loads.pairs, np.maximum(loads.distinct, 1e-9)
        )

    def a2a_s(self, par: Parallel, loads: Loads):
        """Dispatch + combine on the busiest port (the combine mirrors the dispatch)."""
        nbytes = self.model.hidden_size * self.model.dtype_bytes
        send = loads.send.max(axis=1) * nbytes
        recv = loads.recv.max(axis=1) * nbytes
        return 2 * self.comm.all_to_all(send, recv, par.ep)

    def layer_s(self, par: Parallel, batch, loads: Loads, router_s):
        attn, reduce_s, gather_s = self.nonmoe_layer_s(par, batch)
        compute = attn + router_s + self.expert_s(loads).max(axis=1)
        a2a = self.a2a_s(par, loads)
        moe = np.maximum(compute, a2a) if par.overlap else compute + a2a
        return moe + reduce_s + gather_s, a2a

    # ---- memory ------------------------------------------------------------------------------
    def memory(self, par: Parallel, batch):
        """Per-GPU bytes with all its experts resident, and with none (one layer staged)."""
        per_gpu = math.ceil(self.model.num_experts / par.ep)
        b = np.asarray(batch, dtype=float) / (self.gpus // par.tp)
        full = self.mem.bytes(b, 0.0, per_gpu, 0, tp=par.tp)
        return full, self.mem.bytes(b, 0.0, 0, per_gpu, tp=par.tp)

    def resident(self, par: Parallel, batch):
        """Experts per layer each GPU keeps: all of its share if they fit, else as many as fit
        beside one layer's staging slots (costs.memory's accounting, per GPU)."""
        m = self.model
        per_gpu = math.ceil(m.num_experts / par.ep)
        total, staged = self.memory(par, batch)
        free = self.mem.capacity_bytes - staged
        slots = np.floor(np.maximum(free, 0) / (m.num_moe_layers * m.expert_bytes))
        fits = total <= self.mem.capacity_bytes
        return np.where(fits, per_gpu, np.clip(slots, 0, per_gpu)).astype(int), fits, total, free

    # ---- the model -----------------------------------------------------------------------------
    def evaluate(self, par: Parallel, batch=None) -> ParallelResult:
        m = self.model
        par.check(self.gpus, m)
        batch = np.atleast_1d(
            np.asarray(self.workload.batch if batch is None else batch, dtype=float)
        )
        if np.any(batch < 1):
            raise SpecMoEError(f"batch={batch.min():g}: must be >= 1")
        resident, fits, mem, free = self.resident(par, batch)
        dp = self.gpus // par.tp
        router = self.costs.router_and_shared(batch / dp) / par.tp
        layer = a2a = pairs_max = pairs_mean = volume = 0.0
        for row, wgt in zip(self.rows, self.row_weights):
            loads = self.loads(par, batch, row, resident)
            lay, a = self.layer_s(par, batch, loads, router)
            layer, a2a = layer + wgt * lay, a2a + wgt * a
            pairs_max = pairs_max + wgt * loads.pairs.max(axis=1)
            pairs_mean = pairs_mean + wgt * loads.pairs.mean(axis=1)
            sent = (self.gpus / par.ep) * 2 * loads.send.sum(axis=1)  # dispatch + combine
            volume = volume + wgt * sent * m.hidden_size * m.dtype_bytes
        iteration = m.num_moe_layers * layer + self._dense_rest(par, batch)
        return ParallelResult(
            iteration_s=iteration,
            tokens_per_s=batch / iteration,
            layer_s=layer,
            a2a_s_per_layer=a2a,
            a2a_bytes_per_layer=volume,
            imbalance=pairs_max / np.maximum(pairs_mean, 1e-30),
            gpu_memory_bytes=mem,
            fits=fits,
            feasible=free >= 0,
            resident_per_gpu_layer=resident,
        )

    def _dense_rest(self, par: Parallel, batch):
        """Dense (non-MoE) layers and the LM head, per GPU."""
        m, c = self.model, self.costs
        t = batch / (self.gpus // par.tp)
        rest = c.lm_head(t) / par.tp
        dense_layers = m.num_layers - m.num_moe_layers
        if dense_layers:
            attn, reduce_s, _ = self.nonmoe_layer_s(par, batch)
            rest = rest + dense_layers * (attn + c.dense_ffn(t) / par.tp + 2 * reduce_s)
        return rest
