"""The one per-op cost model, shared by the analytic model, the simulator and calibration.

Every op is FLOPs plus bytes at a memory level or over a link; its time is a roofline with
efficiencies and fixed overheads (DESIGN.md §5):
    t = t_fixed + max(FLOPs / (peak · η_c(m)), bytes / (bw · η_m))
    η_c(m) = η_c · m / (m + m_half)           (m = tokens per weight matrix: GEMMs saturate in m)
    transfer: t = t_setup + bytes / (bw_link · η_link)
All functions take numpy arrays or scalars and return seconds. CostParams() is the ideal roofline
(η = 1, no overhead); `params_for(system)` gives the best evidence instead (specmoe.costs.evidence:
calibrated fits, published measurements, stated priors), and the ideal only for `System.ideal`.
Parameters may be numpy arrays (one value per draw, broadcast against the configurations): that is
how specmoe.predictors.intervals propagates their spreads in one call.

Refinements that real GPU kernels need (DESIGN.md §5), each off by default so that a profile
without them keeps the plain roofline:
- op-class parameter groups: grouped MoE GEMMs (moe_*), decode attention (attn_eff,
  attn_fixed_us) and prefill attention (prefill_*) have their own efficiencies and fixed times;
  None shares the dense GEMM group's value;
- tile and wave quantization (tile_m, tile_n > 0): rows padded to the tile, CTAs over the GPU's
  SMs in whole waves; per-expert tokens padded to the fused-MoE block (moe_block_tokens > 0),
  the busiest expert's tokens padded on their own;
- the library's choice of tiling (gemm_tiles = 1): a dense GEMM takes the fastest of several CTA
  tiles and split-K factors, each quantized; smaller tiles reach less of the peak
  (gemm_tile_half), and split-K pays for its fp32 partials;
- L2: in a benchmark that replays one op (`CostModel(replay=True)`), a working set that fits in
  the GPU's L2 (`l2_mb`) is read at l2_bw_factor × the HBM peak instead; a real forward pass
  over many layers streams weights from HBM (replay=False, the default);
- measured tables (specmoe.costs.tables): where given, an op inside a table's range takes the
  interpolated measurement and outside it this model; `CostModel.sources` says which, per op.
  Tables are one-op replays: in a forward pass (replay=False) a measurement is scaled by this
  model's forward/replay ratio (1 unless the op's working set fits in L2 and the profile has an
  L2 term). An op asked at another configuration than the table's (a fused MoE touching fewer
  experts than balanced routing does, decode attention verifying several tokens per sequence)
  takes the measurement at the table's configuration times this model's ratio between the two.
  A table measured on another GPU of the same die (specmoe.costs.evidence.DIES) is scaled the
  same way: the reference is this model on the table's GPU.
  `prediction_costs` gives the cost model predictions use: tables on where the GPU (or its die)
  has them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from specmoe.costs.evidence import evidence_for, measured_system, table_gpu, tables_for
from specmoe.errors import SpecMoEError

GB = 1e9
PREFILL_Q_TILE = 128     # query rows per flash-attention CTA (FlashAttention-2/3 default)
# queries per sequence up to which attention over a KV cache is decode-like (speculative
# verification of up to 64 drafted tokens, the largest gamma the predictors accept, plus one)
MAX_DECODE_QUERIES = 65
TFLOP = 1e12
US = 1e-6
# Where an iteration's time goes: every predictor's breakdown uses these keys.
BREAKDOWN = ("attention", "dense", "expert_compute", "h2d", "cpu_expert", "draft")


@dataclass(frozen=True)
class CostParams:
    """Efficiencies (fractions of peak) and fixed overheads (µs). Defaults: ideal roofline."""

    gemm_compute_eff: float = 1.0     # η_c: best fraction of peak tensor FLOP/s
    gemm_half_tokens: float = 0.0     # m_half: tokens per weight matrix at which η_c is halved
    hbm_eff: float = 1.0              # η_m: fraction of peak HBM bandwidth for weight/KV streaming
    attn_eff: float = 1.0             # fraction of peak HBM bandwidth reading the KV cache
    kernel_overhead_us: float = 0.0   # fixed time per GPU kernel (launch + tail)
    expert_overhead_us: float = 0.0   # fixed time per distinct expert in a grouped expert op
    layer_overhead_us: float = 0.0    # fixed time per decoder layer beyond its kernels
    link_eff: float = 1.0             # η_link: fraction of the link's payload bandwidth,
    #                                   pinned memory
    pageable_eff: float = 1.0         # further fraction when the host buffer is pageable
    transfer_setup_us: float | None = None   # per-copy latency; None = the link profile's setup_us
    cpu_compute_eff: float = 1.0      # fraction of host peak FLOP/s in an expert GEMM
    cpu_mem_eff: float = 1.0          # fraction of host DRAM bandwidth
    cpu_overhead_us: float = 0.0      # fixed time per CPU expert call
    ssd_eff: float = 1.0              # fraction of SSD read bandwidth
    # op-class groups (None: the dense GEMM group's value)
    moe_compute_eff: float | None = None   # grouped expert GEMM: best fraction of peak FLOP/s
    moe_half_tokens: float | None = None   # tokens per expert at which that is halved
    moe_hbm_eff: float | None = None       # fraction of HBM peak streaming expert weights
    moe_kernel_us: float | None = None     # fixed time per grouped-GEMM kernel (routing, sort)
    moe_reread: float = 0.0                # fraction of an expert's weights re-read from HBM per
                                           # extra token block (the rest hit L2)
    attn_fixed_us: float | None = None     # decode attention fixed time (None: kernel_overhead_us)
    attn_item_us: float = 0.0              # decode attention: per (sequence, kv head) work item
    prefill_compute_eff: float | None = None   # causal prefill attention: fraction of peak
    prefill_item_us: float = 0.0               # its set-up time per (sequence, head, query tile)
    prefill_half_head_dim: float = 0.0         # head dim at which its efficiency is halved (softmax
                                               # work per score does not shrink with head dim)
    prefill_fixed_us: float | None = None      # its fixed time
    l2_bw_factor: float = 1.0         # L2 bandwidth / HBM peak (replayed ops that fit in L2)
    table_scale: float = 1.0          # multiplies measured-table latencies: drawn with their
                                      # interpolation error's spread, never fitted
    # kernel geometry, not fitted (0 = no quantization): the kernels' tile shapes
    tile_m: float = 0.0               # GEMM CTA tile rows; small m: the next power of 2 >= 16
    tile_n: float = 0.0               # GEMM CTA tile columns
    moe_block_tokens: float = 0.0     # fused MoE: tokens per expert padded to this block
    gemm_tiles: float = 0.0           # 1: a dense GEMM takes the fastest of GEMM_TILES x
    #                                   SPLIT_K (the library's choice); 0: tile_m x tile_n
    gemm_tile_half: float = 0.0       # tile size (2·tm·tn/(tm+tn)) at which a CTA's tensor
    #                                   throughput halves: smaller tiles load more per FLOP
    split_k_us: float = 0.0           # fixed time a split-K GEMM adds (its partials' reduction)
    sm_bw_share: float = 0.0          # one SM's read bandwidth / its fair share of HBM (0: no
    #                                   per-SM limit): a GEMM of few CTAs cannot draw it all

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PARAM_NAMES = tuple(f.name for f in fields(CostParams))


def params_for(system, ideal: bool = False) -> CostParams:
    """CostParams of a hardware System: the evidence's medians (calibrated fit, published priors),
    or the ideal roofline where `ideal` or `system.ideal` asks for the datasheet upper bound."""
    if ideal or getattr(system, "ideal", False):
        return CostParams()
    evidence = evidence_for(system)
    overrides = dict(evidence.values)
    unknown = sorted(set(overrides) - set(PARAM_NAMES))
    if unknown:
        raise SpecMoEError(
            f"hardware {system.name}: efficiency key(s) {unknown} unknown; allowed {PARAM_NAMES}"
        )
    for k, v in overrides.items():
        if v is not None and v < 0:
            raise SpecMoEError(f"hardware {system.name}: efficiency {k}={v} must be >= 0")
    return replace(CostParams(), **overrides)


def prediction_costs(model, system, params: CostParams | None = None) -> CostModel:
    """The cost model a prediction uses: the best evidence's parameters (or `params`: draws), and
    the GPU's measured kernel tables inside their range (specmoe.costs.evidence.tables_for)."""
    return CostModel(model, system, params, tables=tables_for(system))


def declared_params(system) -> CostParams:
    """The ideal roofline overridden only by the system's own `efficiency` block: the starting
    point of a calibration, which must not inherit priors it is about to measure."""
    return replace(
        CostParams(), **{k: v for k, v in (system.efficiency or {}).items() if v is not None}
    )


def balanced_routing(pairs, num_experts):
    """(distinct experts, busiest expert's pairs) when `pairs` token-expert pairs are spread as
    evenly as possible over `num_experts` experts (the measured tables' "balanced" routing)."""
    pairs = np.asarray(pairs, dtype=float)
    return np.minimum(pairs, num_experts), np.maximum(np.ceil(pairs / num_experts), 1.0)


def roofline(flops, bytes_, peak_flops, bandwidth, t_fixed=0.0):
    """Seconds for an op: fixed time plus the slower of compute and memory at effective peaks."""
    return t_fixed + np.maximum(np.asarray(flops) / peak_flops, np.asarray(bytes_) / bandwidth)


GEOMETRY = ("tile_m", "tile_n", "moe_block_tokens", "gemm_tiles")
# CTA tiles (rows x columns) a GEMM library picks among per shape: the 16-bit tensor-core tiles
# CUTLASS instantiates for Ampere and Hopper (python/cutlass_library/generator.py,
# GenerateSM80_TensorOp_16816: 64..256 x 64..256); cuBLAS's heuristics pick such a kernel per
# shape, roughly the fastest.
GEMM_TILES = ((64.0, 64.0), (64.0, 128.0), (128.0, 64.0), (128.0, 128.0), (128.0, 256.0),
              (256.0, 128.0))
# Split-K factors: powers of 2 up to 128, enough to spread one CTA over any GPU here (<= 148
# SMs); each split keeps at least one 64-deep K step of the main loop (CUTLASS 16-bit tiles are
# 32 or 64 deep in K), and its partials cost their fp32 traffic (CUTLASS ReduceSplitK).
SPLIT_K = (1, 2, 4, 8, 16, 32, 64, 128)
MIN_SPLIT_K = 64.0
FP32 = 4.0


def _row_tile(rows, tile_m):
    """Rows per CTA: the tile, or for small m the next power of 2 >= 16 (mma rows)."""
    return np.clip(2.0 ** np.ceil(np.log2(np.maximum(rows, 1.0))), 16.0, tile_m)


def _padding(rows, cols, tm, tn):
    """Work of the padded tiles / useful work."""
    return np.ceil(rows / tm) * tm * np.ceil(cols / tn) * tn / (rows * cols)


def _fixed_geometry(p: CostParams) -> CostParams:
    """Kernel geometry is one number even when the other parameters are arrays of draws (the
    intervals never sample it): collapse it to a scalar so the branches on it stay scalar."""
    fixed = {}
    for name in GEOMETRY:
        v = np.asarray(getattr(p, name), dtype=float)
        if v.ndim:
            if not np.all(v == v.flat[0]):
                raise SpecMoEError(f"cost parameter {name}: one value per kernel, got several")
            fixed[name] = float(v.flat[0])
    return replace(p, **fixed) if fixed else p


class CostModel:
    """Per-op times for one model on one system. Token counts are arrays or scalars."""

    def __init__(self, model, system, params: CostParams | None = None, replay: bool = False,
                 tables=None):
        self.model = model
        self.system = system
        self.p = params or params_for(system)
        self.p = _fixed_geometry(self.p)
        self.replay = replay          # one op replayed alone: what fits in L2 stays there
        self.tables = tables          # specmoe.costs.tables.Tables or None
        self._measured: CostModel | None = None
        self.sources: dict[str, dict[str, int]] = {}   # op -> {"table": n, "model": n}
        gpu, host, link = system.gpu, system.host, system.link
        self.sms = float(gpu.sm_count)
        self.l2_bytes = gpu.l2_mb * 2**20
        self.peak_flops = self._tensor_tflops(gpu, model.dtype_bytes) * TFLOP
        self.hbm_bw = gpu.hbm_bw_gbps * GB
        self.link_bw = link.h2d_gbps * GB
        self.link_setup = (
            link.setup_us if self.p.transfer_setup_us is None else self.p.transfer_setup_us
        ) * US
        self.cpu_flops = (
            host.cpu_bf16_tflops if model.dtype_bytes <= 2 else host.cpu_fp32_tflops
        ) * TFLOP
        self.dram_bw = host.dram_bw_gbps * GB
        self.ssd_bw = host.ssd_read_gbps * GB
        self.kernel_t = self.p.kernel_overhead_us * US

    @staticmethod
    def _tensor_tflops(gpu, dtype_bytes: float) -> float:
        if dtype_bytes >= 4:
            return gpu.fp32_tflops
        if dtype_bytes <= 1 and gpu.fp8_tflops:
            return gpu.fp8_tflops
        return gpu.bf16_tflops

    # ---- GPU compute -------------------------------------------------------------------------
    def _group(self, name: str, fallback: str):
        v = getattr(self.p, name)
        return getattr(self.p, fallback) if v is None else v

    def compute_eff(self, tokens_per_matrix, eff=None, half=None):
        m = np.maximum(np.asarray(tokens_per_matrix, dtype=float), 1e-9)
        eff = self.p.gemm_compute_eff if eff is None else eff
        half = self.p.gemm_half_tokens if half is None else half
        return eff * m / (m + half)

    def mem_bw(self, working_set_bytes, eff):
        """Bandwidth a working set streams at: HBM × eff, or L2 when replayed and it fits."""
        hbm = self.hbm_bw * eff
        if not self.replay:
            return hbm
        l2 = self.hbm_bw * self.p.l2_bw_factor
        return np.where(np.asarray(working_set_bytes) <= self.l2_bytes, np.maximum(l2, hbm), hbm)

    def wave_factor(self, rows, cols, tile_m=None, split_k=True):
        """Work a tiled kernel does / useful work: rows padded to the tile (the next power of 2,
        16 .. tile_m), columns to tile_n, CTAs run in whole waves over the SMs. A kernel with
        fewer CTAs than SMs splits K to fill them (cuBLAS/CUTLASS split-K, stream-K) when
        `split_k`; the fused MoE kernel does not. 1 without tiles."""
        p = self.p
        if not (p.tile_m and p.tile_n):
            return 1.0
        rows = np.maximum(np.asarray(rows, dtype=float), 1.0)
        cols = np.maximum(np.asarray(cols, dtype=float), 1.0)
        tm = _row_tile(rows, tile_m or p.tile_m)
        ctas = np.ceil(rows / tm) * np.ceil(cols / p.tile_n)
        waves = np.ceil(ctas / self.sms) * self.sms / ctas
        if split_k:
            waves = np.where(ctas < self.sms, 1.0, waves)
        return waves * _padding(rows, cols, tm, p.tile_n)

    def tile_eff(self, tile_m, tile_n):
        """A CTA tile's tensor throughput relative to the best of GEMM_TILES: operands loaded per
        FLOP go as 1/tile_m + 1/tile_n, so with T = their harmonic mean, η = T / (T + half)."""
        def eff(tm, tn):
            size = 2 * tm * tn / (tm + tn)
            return size / (size + self.p.gemm_tile_half)
        return eff(tile_m, tile_n) / np.max([eff(tm, tn) for tm, tn in GEMM_TILES], axis=0)

    def tiled_gemm(self, m, n, k):
        """x[m, k] @ W[k, n] as the library would run it (`gemm_tiles`): the fastest of
        GEMM_TILES × SPLIT_K, each a roofline of its padded, wave-quantized work."""
        best = np.inf
        for tm, tn in GEMM_TILES:
            eff = self.tile_eff(tm, tn)     # one per tile: every split shares it
            for split in SPLIT_K:
                t = self._tiling_time(m, n, k, tm, tn, split, eff)
                ok = (split == 1) | (k / split >= MIN_SPLIT_K)
                best = np.minimum(best, np.where(ok, t, np.inf))
        return best

    def _tiling_time(self, m, n, k, tile_m, tile_n, split, tile_eff):
        """One tiling: split × the output tiles' CTAs in waves over the SMs, at `tile_eff` of the
        peak; with split > 1 every split writes an fp32 partial the reduction reads back."""
        tm = _row_tile(m, tile_m)
        ctas = np.ceil(m / tm) * np.ceil(n / tile_n) * split
        waves = np.ceil(ctas / self.sms) * self.sms / ctas
        work = 2 * m * n * k * waves * _padding(m, n, tm, tile_n) / tile_eff
        b = self.model.dtype_bytes
        moved = (k * n + m * k + m * n) * b + (split > 1) * 2 * split * m * n * FP32
        peak = self.peak_flops * self.compute_eff(m)
        fixed = self.kernel_t + (split > 1) * self.p.split_k_us * US
        t = roofline(work, moved, peak, self.mem_bw(moved, self.p.hbm_eff), fixed)
        if not np.any(self.p.sm_bw_share):
            return t
        # one SM streams its CTAs' operand slices (tm + tn rows of k / split) at most at
        # sm_bw_share x its fair share of HBM: few CTAs cannot draw the whole bandwidth
        per_sm = np.ceil(ctas / self.sms) * (tm + tile_n) * (k / split) * b
        return np.maximum(t, fixed + per_sm / (self.hbm_bw / self.sms * self.p.sm_bw_share))

    def gemm(self, flops, weight_bytes, tokens_per_matrix, act_bytes=0.0, kernels=1, n_cols=None):
        """A weight GEMM: weights streamed once, activations alongside. `n_cols` (output columns)
        turns on tile and wave quantization where the profile has tiles."""
        peak = self.peak_flops * self.compute_eff(tokens_per_matrix)
        if n_cols is not None:
            flops = np.asarray(flops) * self.wave_factor(tokens_per_matrix, n_cols)
        nbytes = np.asarray(weight_bytes) + act_bytes
        bw = self.mem_bw(nbytes, self.p.hbm_eff)
        return roofline(flops, nbytes, peak, bw, kernels * self.kernel_t)

    def dense_gemm(self, m, n, k):
        """x[m, k] @ W[k, n] (a measured GEMM row, or any linear layer)."""
        m, n, k = (np.asarray(v, dtype=float) for v in (m, n, k))
        return self._hybrid("gemm", self._dense_gemm_model(m, n, k), (n, k), m,
                            lambda cm: cm._dense_gemm_model(m, n, k))

    def _dense_gemm_model(self, m, n, k):
        if self.p.gemm_tiles:
            return self.tiled_gemm(m, n, k)
        b = self.model.dtype_bytes
        return self.gemm(2 * m * n * k, k * n * b, m, act_bytes=(m * k + m * n) * b, n_cols=n)

    def weight_gemms(self, model_t, tokens, shapes):
        """Weight GEMMs x[tokens, k] @ W[k, n], one per (n, k) of `shapes`, whose time this model
        gives as `model_t`: with measured tables, each GEMM is dense_gemm (its table inside the
        range, the model outside); without them, or without `shapes`, `model_t`."""
        if self.tables is None or not shapes:
            return model_t
        return sum(self.dense_gemm(tokens, n, k) for n, k in shapes)

    def padded_pairs(self, pairs, distinct, busiest=None):
        """Token-expert pairs after padding each expert's tokens to the fused-MoE block; the
        busiest expert (skewed routing) is padded on its own, the rest share the remainder."""
        B = self.p.moe_block_tokens
        if not B:
            return pairs
        busiest = pairs / distinct if busiest is None else np.minimum(busiest, pairs)
        rest = np.maximum(distinct - 1.0, 0.0)
        rest_mean = np.where(rest > 0, (pairs - busiest) / np.maximum(rest, 1e-9), 0.0)
        return B * np.ceil(busiest / B) + rest * B * np.ceil(rest_mean / B)

    def experts(self, tokens, distinct, busiest=None, distribution="balanced"):
        """Grouped expert FFN over `tokens` token-expert pairs spread on `distinct` experts
        (`busiest`: the most-loaded expert's tokens, default an even spread). A measured fused-MoE
        table of the model's shape answers inside its range: at `distribution`'s routing (the
        table's "balanced" one unless a row says otherwise), scaled by this model's ratio between
        the routing asked and the table's."""
        m = self.model
        t = self._experts_model(tokens, distinct, busiest)
        if self.tables is None:
            return self._hybrid("moe", t)
        pairs = np.asarray(tokens, dtype=float)
        if distribution == "balanced":
            ref_distinct, ref_busiest = balanced_routing(pairs, m.num_experts)
        else:
            ref_distinct, ref_busiest = distinct, busiest
        key = (m.hidden_size, m.expert_intermediate_size, m.num_experts, m.top_k, distribution)
        t = self._hybrid("moe", t, key, pairs / m.top_k,
                         lambda cm: cm._experts_model(pairs, ref_distinct, ref_busiest))
        return np.where(pairs > 0, t, 0.0)

    def _experts_model(self, tokens, distinct, busiest=None):
        m = self.model
        distinct = np.maximum(np.asarray(distinct, dtype=float), 1e-9)
        tokens = np.asarray(tokens, dtype=float)
        per_expert = tokens / distinct
        act = tokens * (2 * m.hidden_size + 2 * m.expert_intermediate_size) * m.dtype_bytes
        padded = self.padded_pairs(tokens, distinct, busiest)
        flops = padded * m.expert_flops_per_token
        if self.p.moe_block_tokens:   # first GEMM (gate+up, or up alone) sets the CTA count
            cols = m.ffn_gemm_shapes(m.expert_intermediate_size)[0][0]
            flops = flops * self.wave_factor(padded, cols,
                                  tile_m=self.p.moe_block_tokens, split_k=False)
        eff = self.compute_eff(per_expert, self._group("moe_compute_eff", "gemm_compute_eff"),
                               self._group("moe_half_tokens", "gemm_half_tokens"))
        # each block of an expert's tokens streams the expert's weights; re-reads mostly hit L2
        blocks = padded / self.p.moe_block_tokens if self.p.moe_block_tokens else distinct
        weights = (distinct + self.p.moe_reread * (blocks - distinct)) * m.expert_bytes + act
        bw = self.mem_bw(weights, self._group("moe_hbm_eff", "hbm_eff"))
        fixed = 2 * self._group("moe_kernel_us", "kernel_overhead_us") * US
        t = roofline(flops, weights, self.peak_flops * eff, bw, fixed)
        # Implementations that loop over experts pay a fixed time per expert (fitted; 0 = grouped).
        t = t + distinct * self.p.expert_overhead_us * US
        return np.where(tokens > 0, t, 0.0)

    def fused_moe(self, tokens, distinct, busiest=None, distribution="balanced"):
        """experts() for a measured-table key: interpolated inside the table's range."""
        tokens = np.asarray(tokens, dtype=float)
        return self.experts(tokens * self.model.top_k, distinct, busiest, distribution)

    def _hybrid(self, op, model_t, key=None, x=None, ref=None):
        """The measured table inside its range (where one is given), this model outside; counted
        per op in `sources`. `ref(cm)`: this model's time for the configuration the table measured,
        on `cm` (the one-op replay on the table's GPU, as it was measured); the measurement is
        scaled by model_t / ref, which is 1 where the asked op is the measured one."""
        used = self.sources.setdefault(op, {"table": 0, "model": 0})
        if self.tables is None or key is None:
            used["model"] += int(np.size(model_t))
            return model_t
        measured, inside = self.tables.lookup(op, key, x)
        measured = measured * self.p.table_scale
        if np.any(inside) and ref is not None:
            ref_t = np.asarray(ref(self._as_measured()), dtype=float)
            scale = np.divide(model_t, ref_t, out=np.ones(np.broadcast(model_t, ref_t).shape),
                              where=ref_t > 0)
            measured = measured * scale
        inside = np.broadcast_to(inside, np.broadcast(inside, measured).shape)
        used["table"] += int(np.sum(inside))
        used["model"] += int(np.size(inside) - np.sum(inside))
        return np.where(inside, measured, model_t)

    def _as_measured(self) -> CostModel:
        """This model as the table's measurement saw it: one op replayed alone (what fits in L2
        stays there), on the GPU the table was measured on (a same-die GPU's tables:
        specmoe.costs.evidence.tables_for)."""
        gpu = table_gpu(self.tables, self.system)
        if self.replay and gpu == self.system.gpu.name:
            return self
        if self._measured is None:
            self._measured = CostModel(self.model, measured_system(self.system, gpu), self.p,
                                       replay=True)
        return self._measured

    def small_module(self, tokens, ratio):
        """A resident FFN of `ratio` × one routed expert's parameters over `tokens` (Duo-LLM's
        small module): a dense GEMM pair with its weights streamed from HBM."""
        m = self.model
        tokens = np.asarray(tokens, dtype=float)
        act = tokens * 2 * m.hidden_size * m.dtype_bytes
        t = self.gemm(
            tokens * ratio * m.expert_flops_per_token,
            ratio * m.expert_bytes,
            tokens,
            act,
            kernels=2,
        )
        return np.where((tokens > 0) & (ratio > 0), t, 0.0)

    def attention_block(self, tokens, batch, context, causal=False):
        """Projections (q,k,v,o) plus scores (attention_scores; `causal`: a prefill), one layer.
        Norms and RoPE are overhead."""
        m = self.model
        proj = self.weight_gemms(self.gemm(
            tokens * m.attn_proj_flops_per_token, m.attn_weight_bytes_per_layer, tokens, kernels=2
        ), tokens, self._projection_shapes())
        norms_and_rope = 2 * self.kernel_t  # RMSNorm, RoPE
        return proj + self.attention_scores(tokens, batch, context, causal) + norms_and_rope

    def _projection_shapes(self):
        """(n, k) of the fused q/k/v and the o projection; None for MLA and cross-attention, whose
        projections are not these two GEMMs (the model's aggregate answers)."""
        m = self.model
        if m.is_mla or m.encoder_layers:
            return None
        q, kv = m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim
        return [(q + 2 * kv, m.hidden_size), (m.hidden_size, q)]

    def attention_scores(self, tokens, batch, context, causal=False):
        """QKᵀ and PV over `context` cached positions per sequence: reads each sequence's KV once.
        With `tokens` / `batch` <= MAX_DECODE_QUERIES (decode, speculative verification), a
        measured decode-attention table answers inside its range, at one query per sequence,
        scaled by this model's ratio between the queries asked and one. `causal`: a prefill, the
        `tokens` / `batch` new tokens of each sequence attending to each other (`context` is then
        their mean position): prefill_attention, its own parameter group and tables."""
        queries = np.asarray(tokens, dtype=float) / np.maximum(np.asarray(batch, dtype=float), 1)
        if causal and not self.model.is_mla:
            return self.prefill_attention(batch, queries)
        return self._decode_scores(tokens, batch, context, queries)

    def _decode_scores(self, tokens, batch, context, queries):
        t = self._scores_model(tokens, batch, context)
        m = self.model
        if self.tables is None or m.is_mla:
            return self._hybrid("attn_decode", t)
        batch = np.asarray(batch, dtype=float)
        # prefill-like rows (many queries per sequence) get NaN: outside every table
        decode_ctx = np.where(queries <= MAX_DECODE_QUERIES, context, np.nan)
        return self._hybrid("attn_decode", t, (m.num_heads, m.num_kv_heads, m.head_dim, batch),
                            decode_ctx, lambda cm: cm._scores_model(batch, batch, context))

    def _scores_model(self, tokens, batch, context):
        m = self.model
        kv = np.asarray(batch) * np.asarray(context) * m.kv_bytes_per_token_per_layer
        score_flops = np.asarray(tokens) * m.attn_score_flops_per_token(context)
        fixed = self._group("attn_fixed_us", "kernel_overhead_us") * US
        t = roofline(score_flops, kv, self.peak_flops * self.p.gemm_compute_eff,
                     self.mem_bw(kv, self.p.attn_eff), fixed)
        if not np.any(self.p.attn_item_us):
            return t
        # one CTA per (sequence, kv head), run in waves over the SMs: each has a set-up cost that
        # short contexts do not hide (measured: ~3-4 µs per item per SM on H100 at context <= 16)
        waves = np.ceil(np.asarray(batch) * m.num_kv_heads / self.sms)
        return np.maximum(t, fixed + waves * self.p.attn_item_us * US)

    def decode_attention(self, batch, context):
        """One decode step's attention scores (a measured-table key: heads, kv heads, head dim)."""
        batch = np.asarray(batch, dtype=float)
        return self.attention_scores(batch, batch, context)

    def prefill_attention(self, batch, seq):
        """Causal self-attention over `seq` new tokens per sequence (flash-attention style: Q, K,
        V and O cross HBM once; query i attends to i + 1 keys). With `prefill_item_us`, work is
        one CTA per (sequence, kv head, PREFILL_Q_TILE query rows of its group) in waves over the
        SMs, each paying a set-up time plus its share of the FLOPs. A measured prefill-attention
        table answers inside its range."""
        m = self.model
        batch, seq = np.asarray(batch, dtype=float), np.asarray(seq, dtype=float)
        key = (m.num_heads, m.num_kv_heads, m.head_dim, batch)
        return self._hybrid("attn_prefill", self._prefill_model(batch, seq), key, seq,
                            lambda cm: cm._prefill_model(batch, seq))

    def _prefill_model(self, batch, seq):
        m = self.model
        flops = batch * 4.0 * m.num_heads * m.head_dim * seq * (seq + 1) / 2
        nbytes = batch * seq * 2 * (m.num_heads + m.num_kv_heads) * m.head_dim * m.dtype_bytes
        hd = float(m.head_dim)
        peak = (self.peak_flops * self._group("prefill_compute_eff", "gemm_compute_eff")
                * hd / (hd + self.p.prefill_half_head_dim))
        fixed = self._group("prefill_fixed_us", "kernel_overhead_us") * US
        t = roofline(flops, nbytes, peak, self.mem_bw(nbytes, self.p.attn_eff), fixed)
        if np.any(self.p.prefill_item_us):
            # GQA kernels pack a kv head's query heads into one CTA's rows (FlashAttention-3)
            group = m.num_heads / m.num_kv_heads
            items = batch * m.num_kv_heads * np.ceil(seq * group / PREFILL_Q_TILE)
            waves = np.ceil(items / self.sms)
            t = np.maximum(t, fixed + waves * (self.p.prefill_item_us * US
                                               + flops / items / (peak / self.sms)))
        return t

    def router_and_shared(self, tokens):
        """Gate GEMM and any shared experts of one MoE layer."""
        m = self.model
        gate_bytes = m.hidden_size * m.num_experts * m.dtype_bytes
        t = self.weight_gemms(self.gemm(tokens * m.router_flops_per_token, gate_bytes, tokens),
                              tokens, [(m.num_experts, m.hidden_size)])
        if m.num_shared_experts:
            shared = self.gemm(tokens * m.shared_expert_flops_per_token,
                               m.shared_params * m.dtype_bytes, tokens, kernels=2)
            inter = m.num_shared_experts * m.shared_expert_intermediate_size
            t = t + self.weight_gemms(shared, tokens, m.ffn_gemm_shapes(inter))
        return t

    def dense_ffn(self, tokens):
        m = self.model
        w = m.ffn_matmul_params(m.dense_intermediate_size) * m.dtype_bytes
        t = self.gemm(tokens * m.dense_ffn_flops_per_token, w, tokens, kernels=2)
        return self.weight_gemms(t, tokens, m.ffn_gemm_shapes(m.dense_intermediate_size))

    def lm_head(self, tokens):
        m = self.model
        t = self.gemm(
            tokens * m.lm_head_flops_per_token, m.hidden_size * m.vocab_size * m.dtype_bytes, tokens
        )
        return self.weight_gemms(t, tokens, [(m.vocab_size, m.hidden_size)])

    def layer_fixed(self):
        return self.p.layer_overhead_us * US

    # ---- data movement -----------------------------------------------------------------------
    def h2d(self, nbytes, copies=1, pinned=True):
        """Host→GPU copies over the link: `copies` transfers totalling `nbytes`."""
        eff = self.p.link_eff * (1.0 if pinned else self.p.pageable_eff)
        return np.asarray(copies) * self.link_setup + np.asarray(nbytes) / (self.link_bw * eff)

    def d2h(self, nbytes, copies=1, pinned=True):
        """GPU→host copies (activations for CPU experts, KV offload)."""
        eff = self.p.link_eff * (1.0 if pinned else self.p.pageable_eff)
        bw = self.system.link.d2h_gbps * GB
        return np.asarray(copies) * self.link_setup + np.asarray(nbytes) / (bw * eff)

    def expert_fetch(self, n_experts=1, pinned=True):
        """Fetching whole experts (one copy each) from host memory, plus the SSD share if any."""
        n = np.asarray(n_experts, dtype=float)
        return self.h2d(n * self.model.expert_bytes, n, pinned) + n * self.ssd_per_expert()

    def ssd_per_expert(self) -> float:
        """Extra time per expert fetch when not all experts fit in host DRAM
        (read from SSD first)."""
        m = self.model
        host_bytes = (
            self.system.host.dram_gb * GB - m.resident_bytes - m.encoder_experts_total_bytes
        )
        on_ssd = min(1.0, max(0.0, 1.0 - host_bytes / m.experts_total_bytes))
        return on_ssd * self.model.expert_bytes / (self.ssd_bw * self.p.ssd_eff)

    # ---- host compute ------------------------------------------------------------------------
    def cpu_expert(self, tokens):
        """One expert FFN over `tokens` tokens on the host CPU, weights read from DRAM."""
        m = self.model
        tokens = np.asarray(tokens, dtype=float)
        t = roofline(tokens * m.expert_flops_per_token, m.expert_bytes,
                     self.cpu_flops * self.p.cpu_compute_eff, self.dram_bw * self.p.cpu_mem_eff,
                     self.p.cpu_overhead_us * US)
        return np.where(tokens > 0, t, 0.0)
