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
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from specmoe.costs.evidence import evidence_for
from specmoe.errors import SpecMoEError

GB = 1e9
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
    link_eff: float = 1.0             # η_link: fraction of the link's payload bandwidth, pinned memory
    pageable_eff: float = 1.0         # further fraction when the host buffer is pageable
    transfer_setup_us: float | None = None   # per-copy latency; None = the link profile's setup_us
    cpu_compute_eff: float = 1.0      # fraction of host peak FLOP/s in an expert GEMM
    cpu_mem_eff: float = 1.0          # fraction of host DRAM bandwidth
    cpu_overhead_us: float = 0.0      # fixed time per CPU expert call
    ssd_eff: float = 1.0              # fraction of SSD read bandwidth

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
        raise SpecMoEError(f"hardware {system.name}: efficiency key(s) {unknown} unknown; allowed {PARAM_NAMES}")
    for k, v in overrides.items():
        if v is not None and v < 0:
            raise SpecMoEError(f"hardware {system.name}: efficiency {k}={v} must be >= 0")
    return replace(CostParams(), **overrides)


def declared_params(system) -> CostParams:
    """The ideal roofline overridden only by the system's own `efficiency` block: the starting
    point of a calibration, which must not inherit priors it is about to measure."""
    return replace(CostParams(), **{k: v for k, v in (system.efficiency or {}).items() if v is not None})


def roofline(flops, bytes_, peak_flops, bandwidth, t_fixed=0.0):
    """Seconds for an op: fixed time plus the slower of compute and memory at effective peaks."""
    return t_fixed + np.maximum(np.asarray(flops) / peak_flops, np.asarray(bytes_) / bandwidth)


class CostModel:
    """Per-op times for one model on one system. Token counts are arrays or scalars."""

    def __init__(self, model, system, params: CostParams | None = None):
        self.model = model
        self.system = system
        self.p = params or params_for(system)
        gpu, host, link = system.gpu, system.host, system.link
        self.peak_flops = self._tensor_tflops(gpu, model.dtype_bytes) * TFLOP
        self.hbm_bw = gpu.hbm_bw_gbps * GB
        self.link_bw = link.h2d_gbps * GB
        self.link_setup = (link.setup_us if self.p.transfer_setup_us is None else self.p.transfer_setup_us) * US
        self.cpu_flops = (host.cpu_bf16_tflops if model.dtype_bytes <= 2 else host.cpu_fp32_tflops) * TFLOP
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
    def compute_eff(self, tokens_per_matrix):
        m = np.maximum(np.asarray(tokens_per_matrix, dtype=float), 1e-9)
        return self.p.gemm_compute_eff * m / (m + self.p.gemm_half_tokens)

    def gemm(self, flops, weight_bytes, tokens_per_matrix, act_bytes=0.0, kernels=1):
        """A weight GEMM (or a grouped one): weights streamed from HBM once, activations alongside."""
        peak = self.peak_flops * self.compute_eff(tokens_per_matrix)
        bw = self.hbm_bw * self.p.hbm_eff
        return roofline(flops, np.asarray(weight_bytes) + act_bytes, peak, bw, kernels * self.kernel_t)

    def experts(self, tokens, distinct):
        """Grouped expert FFN over `tokens` token-expert pairs spread on `distinct` experts."""
        m = self.model
        distinct = np.maximum(np.asarray(distinct, dtype=float), 1e-9)
        tokens = np.asarray(tokens, dtype=float)
        act = tokens * (2 * m.hidden_size + 2 * m.expert_intermediate_size) * m.dtype_bytes
        t = self.gemm(tokens * m.expert_flops_per_token, distinct * m.expert_bytes, tokens / distinct, act, kernels=2)
        # Implementations that loop over experts pay a fixed time per expert (fitted; 0 = grouped).
        t = t + distinct * self.p.expert_overhead_us * US
        return np.where(tokens > 0, t, 0.0)

    def small_module(self, tokens, ratio):
        """A resident FFN of `ratio` × one routed expert's parameters over `tokens` (Duo-LLM's
        small module): a dense GEMM pair with its weights streamed from HBM."""
        m = self.model
        tokens = np.asarray(tokens, dtype=float)
        act = tokens * 2 * m.hidden_size * m.dtype_bytes
        t = self.gemm(tokens * ratio * m.expert_flops_per_token, ratio * m.expert_bytes, tokens, act, kernels=2)
        return np.where((tokens > 0) & (ratio > 0), t, 0.0)

    def attention_block(self, tokens, batch, context):
        """Projections (q,k,v,o) plus scores over the cache, one layer. Norms and RoPE are overhead."""
        m = self.model
        proj = self.gemm(tokens * m.attn_proj_flops_per_token, m.attn_weight_bytes_per_layer, tokens, kernels=2)
        return proj + self.attention_scores(tokens, batch, context) + 2 * self.kernel_t  # + RMSNorm, RoPE

    def attention_scores(self, tokens, batch, context):
        """QKᵀ and PV over `context` cached positions per sequence: reads each sequence's KV once."""
        m = self.model
        kv = np.asarray(batch) * np.asarray(context) * m.kv_bytes_per_token_per_layer
        score_flops = np.asarray(tokens) * m.attn_score_flops_per_token(context)
        return roofline(score_flops, kv, self.peak_flops * self.p.gemm_compute_eff,
                        self.hbm_bw * self.p.attn_eff, self.kernel_t)

    def router_and_shared(self, tokens):
        """Gate GEMM and any shared experts of one MoE layer."""
        m = self.model
        gate_bytes = m.hidden_size * m.num_experts * m.dtype_bytes
        t = self.gemm(tokens * m.router_flops_per_token, gate_bytes, tokens)
        if m.num_shared_experts:
            t = t + self.gemm(tokens * m.shared_expert_flops_per_token, m.shared_params * m.dtype_bytes, tokens, kernels=2)
        return t

    def dense_ffn(self, tokens):
        m = self.model
        mats = 3 if m.gated_ffn else 2
        w = mats * m.hidden_size * m.dense_intermediate_size * m.dtype_bytes
        return self.gemm(tokens * m.dense_ffn_flops_per_token, w, tokens, kernels=2)

    def lm_head(self, tokens):
        m = self.model
        return self.gemm(tokens * m.lm_head_flops_per_token, m.hidden_size * m.vocab_size * m.dtype_bytes, tokens)

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
        """Extra time per expert fetch when not all experts fit in host DRAM (read from SSD first)."""
        m = self.model
        host_bytes = self.system.host.dram_gb * GB - m.resident_bytes - m.encoder_experts_total_bytes
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
