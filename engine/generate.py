"""Engine: a model, its expert store and a policy;
generate() runs prefill then decode or speculation.

Static batching: the batch stays whole until every sequence has max_new_tokens. A sequence that is
done keeps its place (its positions are recomputed and discarded) so every step sees batch B, as
a static-batch benchmark should; its output is cut at max_new_tokens.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from specmoe.engine import ops
from specmoe.engine.config import MoEConfig
from specmoe.engine.expert_store import ExpertStore
from specmoe.engine.graphs import DraftGraph
from specmoe.engine.model import KVCache, Transformer
from specmoe.engine.moe import ResidentExperts
from specmoe.engine.policies import default_slots, make_provider, provider_class, resolve_residency
from specmoe.engine.speculative import (
    accept_greedy,
    accept_sampling,
    accept_synthetic,
    draft_self,
    draft_separate,
    probs,
    sample,
    verify,
)
from specmoe.engine.tracer import NullTracer, device_fingerprint
from specmoe.engine.tree import tree_round
from specmoe.engine.weights import Weights, load_weights, random_model

from specmoe.errors import SpecMoEError
from specmoe.inputs.policies import Policy, validate_policy
from specmoe.inputs.tree import tree_size


@dataclass
class GenerationStats:
    batch: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    tokens_per_s: float = 0.0            # new tokens (after the prefill's first) / decode time
    speculative: bool = False
    gamma: int = 0
    verifications: int = 0               # speculative rounds
    accepted_per_verify: float = 0.0     # mean accepted drafts per sequence per round
    tokens_per_verify: float = 0.0       # mean tokens per sequence per round (accepted + 1)
    accept_counts: list[int] = field(default_factory=list)  # [i]: sequence-rounds with > i accepted
    sequence_rounds: int = 0
    bytes_by_link: dict[str, int] = field(default_factory=dict)
    weight_bytes_h2d: int = 0
    experts_fetched: int = 0
    prefetched: int = 0
    hits: int = 0
    misses: int = 0
    policy_counters: dict[str, int] = field(default_factory=dict)
    synthetic_acceptance: float | None = None
    # γ of each round (varies with --gamma auto)
    gamma_by_round: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GenerationResult:
    tokens: list[list[int]]
    stats: GenerationStats
    routing: list[dict] | None = None   # per step, per layer: phase, router ids per token, resident


def as_weights(src, seed: int = 0) -> Weights:
    if isinstance(src, Weights):
        return src
    if isinstance(src, MoEConfig):
        return random_model(src, seed)
    if isinstance(src, (str, Path)):
        return load_weights(src)
    raise SpecMoEError(f"model_or_weights: got {type(src).__name__}; allowed Weights, MoEConfig, "
                       "or a directory with config.json + *.safetensors")


class Engine:
    def __init__(self, model_or_weights, policy: Policy, device: str = "cpu", tracer=None, *,
                 draft=None, expert_slots: int | None = None, cpu_threshold: int | None = None,
                 max_batch: int | None = None, max_seq_len: int | None = None,
                 affinity: list | None = None, cuda_graphs: bool | None = None) -> None:
        """cuda_graphs: capture SpecMoE's greedy self-draft step in a CUDA graph (graphs.py);
        default from SPECMOE_ENGINE_GRAPHS=1, off otherwise until measured on a GPU."""
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SpecMoEError("device='cuda' but CUDA is not available; use device='cpu'")
        w = as_weights(model_or_weights)
        cfg = w.cfg.with_(
            max_batch=max_batch or w.cfg.max_batch, max_seq_len=max_seq_len or w.cfg.max_seq_len
        )
        validate_policy(policy, cfg.experts, cfg.layers)
        provider_class(policy)
        policy = resolve_residency(policy, cfg)     # the trace header records the number used
        if self.device.type == "cuda":
            w.pin()
        self.cfg, self.policy = cfg, policy
        self.tracer = tracer or NullTracer()
        slots = expert_slots or default_slots(policy, cfg)
        if slots < default_slots(policy, cfg):
            raise SpecMoEError(f"expert_slots={slots}: policy {policy.name} needs at least "
                               f"{default_slots(policy, cfg)} for this model")
        self.store = ExpertStore(cfg, w.experts, self.device, slots, self.tracer)
        self.model = Transformer(cfg, w.dense, None, self.device, self.tracer)
        self.provider = make_provider(policy, cfg, self.store, self.model.gates, self.tracer,
                                      cpu_threshold=cpu_threshold, affinity=affinity)
        self.model.experts = self.provider
        self.cache = KVCache(cfg, cfg.max_batch, cfg.max_seq_len, self.device)
        self.draft = self.draft_cache = None
        if cuda_graphs is None:
            cuda_graphs = os.environ.get("SPECMOE_ENGINE_GRAPHS", "").strip() == "1"
        self.graphs = DraftGraph(self) if cuda_graphs and self.device.type == "cuda" else None
        if policy.name == "eagle":
            self._init_draft(draft)
        elif draft is not None:
            raise SpecMoEError(
                f"draft model given but policy={policy.name!r} does not use one (use eagle)"
            )

    def _init_draft(self, draft) -> None:
        if draft is None:
            raise SpecMoEError(
                "policy eagle needs a separate draft model (draft=Weights|MoEConfig|path)"
            )
        dw = as_weights(draft, seed=1)
        if dw.cfg.vocab != self.cfg.vocab:
            raise SpecMoEError(
                f"draft vocab={dw.cfg.vocab} differs from the target's vocab={self.cfg.vocab}"
            )
        dcfg = dw.cfg.with_(max_batch=self.cfg.max_batch, max_seq_len=self.cfg.max_seq_len)
        experts = ResidentExperts(dcfg, dw.experts, self.device, self.tracer)
        self.draft = Transformer(dcfg, dw.dense, experts, self.device, self.tracer)
        self.draft_cache = KVCache(dcfg, dcfg.max_batch, dcfg.max_seq_len, self.device)

    @property
    def tracer(self):
        return self._tracer

    @tracer.setter
    def tracer(self, tracer) -> None:
        """Swap the tracer (e.g. untraced warm-up, traced run); every component follows."""
        self._tracer = tracer or NullTracer()
        if getattr(self._tracer, "enabled", False):
            self._tracer.device = self.device
        for part in ("store", "model", "provider", "draft"):
            obj = getattr(self, part, None)
            if obj is not None:
                obj.tracer = self._tracer
        if getattr(self, "draft", None) is not None:
            self.draft.experts.tracer = self._tracer

    # ------------------------------------------------------------------ generate

    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
                 seed: int = 0, synthetic_acceptance: float | None = None,
                 record_routing: bool = False, gamma_controller=None) -> GenerationResult:
        """`gamma_controller` (e.g. specmoe.planning.search.GammaController): γ is its `.gamma` at
        start and whatever its `.observe(accepted, drafted)` returns after each round, within its
        `.gammas`."""
        self._check(prompts, max_new_tokens, temperature, synthetic_acceptance)
        B = len(prompts)
        spec = self.policy.speculative and B >= self.policy.spec_min_batch
        gamma = self.policy.gamma if spec else 0
        ctl = gamma_controller if spec else None
        gmax = int(max(ctl.gammas)) if ctl is not None else gamma
        if ctl is not None:
            gamma = int(ctl.gamma)
        alpha = synthetic_acceptance if spec else None
        # A finished sequence rides along in the batch:
        # it may have overshot by γ and still verifies γ+1.
        tree = int(tree_size(gmax, self.policy.tree_width, self.policy.tree_levels)) - gmax
        self.cache.check(B, max(map(len, prompts)) + max_new_tokens + 2 * gmax + 1 + tree)
        self.provider.seed = seed
        self.provider.reset(record=record_routing)
        self._start_trace(prompts, max_new_tokens, temperature, seed, spec, alpha)
        run = _Run(self, B, max_new_tokens, temperature, seed, gamma, alpha, ctl, gmax)
        run.prefill(prompts)
        run.decode_all()
        self._check_kernels()
        return run.result(record_routing)

    def _check_kernels(self) -> None:
        """After a run (the first one is the warm-up): every kernel meant to run on Triton did,
        else SpecMoEError; the trace header records the kernels active after the run."""
        active = ops.require_kernels(self.device, self.cfg.torch_dtype)
        if self.tracer.enabled:
            self.tracer.header.setdefault("engine", {})["kernels"] = active

    def _check(self, prompts, max_new_tokens, temperature, alpha) -> None:
        if not prompts or not all(isinstance(p, (list, tuple)) and p for p in prompts):
            raise SpecMoEError("prompts: need a non-empty list of non-empty token id lists")
        bad = [
            t for p in prompts for t in p if not isinstance(t, int) or not 0 <= t < self.cfg.vocab
        ]
        if bad:
            raise SpecMoEError(f"prompt token ids {bad[:5]} outside 0..{self.cfg.vocab - 1}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise SpecMoEError(f"max_new_tokens={max_new_tokens!r}: must be an int >= 1")
        if temperature < 0:
            raise SpecMoEError(f"temperature={temperature}: must be >= 0")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise SpecMoEError(f"synthetic_acceptance={alpha}: allowed [0, 1]")

    def _start_trace(self, prompts, max_new_tokens, temperature, seed, spec, alpha) -> None:
        if not self.tracer.enabled:
            return
        self.tracer.reset()
        self.tracer.header = {
            "device": device_fingerprint(self.device),
            "model": self.cfg.to_dict(),
            "workload": {"batch": len(prompts), "prompt_lens": [len(p) for p in prompts],
                         "max_new_tokens": max_new_tokens, "temperature": temperature,
                         "seed": seed, "speculative": spec, "synthetic_acceptance": alpha},
            "policy": self.policy.to_dict(),
            "synthetic_acceptance": alpha,
            "engine": {
                "expert_slots": self.store.n_slots,
                "cuda_graphs": self.graphs is not None,
                "expert_bytes": self.cfg.expert_bytes,
                "kernels_at_start": ops.active_kernels(),
                "draft_model": self.draft.cfg.to_dict() if self.draft else None,
            },
        }


class _Run:
    """One generate() call: state and the loop."""

    def __init__(self, eng: Engine, B: int, max_new: int, temperature: float, seed: int,
                 gamma: int, alpha: float | None, controller=None, gmax: int | None = None) -> None:
        self.e, self.B, self.max_new, self.T = eng, B, max_new, temperature
        self.gamma, self.alpha = gamma, alpha
        self.controller, self.gmax = controller, gamma if gmax is None else gmax
        dev = eng.device
        self.gen = torch.Generator(device=dev).manual_seed(seed)
        self.coin = torch.Generator().manual_seed(seed + 7919)
        self.stats = GenerationStats(batch=B, speculative=self.gmax > 0, gamma=gamma,
                                     accept_counts=[0] * self.gmax, synthetic_acceptance=alpha)
        self.step = 0

    def _sync(self) -> None:
        if self.e.device.type == "cuda":
            torch.cuda.synchronize(self.e.device)

    def _phase(self, phase: str) -> None:
        self.e.provider.set_step(self.step, phase)

    def prefill(self, prompts: list[list[int]]) -> None:
        e, B = self.e, self.B
        self._sync()
        t0 = time.perf_counter()
        lens = torch.tensor([len(p) for p in prompts])
        width = int(lens.max())
        toks = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
        valid = torch.arange(width)[None, :] < lens[:, None]
        self._phase("prefill")
        rows = torch.arange(B, device=e.device)
        last = (lens - 1).to(e.device)
        with e.tracer.span("prefill", "prefill", step=0, phase="prefill", tokens=int(lens.sum())):
            e.cache.lengths[:B] = 0
            h = e.model.forward(toks, e.cache, "prefill", valid)
            first = sample(e.model.logits(h[rows, last]), self.T, self.gen)
            if e.draft is not None and self.gmax:
                e.draft_cache.lengths[:B] = 0
                e.draft.forward(toks, e.draft_cache, "prefill", valid)
                e.draft_cache.lengths[:B] = lens
        e.cache.lengths[:B] = lens
        self.seqs = [list(p) for p in prompts]
        self.out = [[t] for t in first.tolist()]
        self.pending = first
        self._sync()
        self.stats.prefill_s = time.perf_counter() - t0

    def decode_all(self) -> None:
        self._sync()
        t0 = time.perf_counter()
        while min(len(o) for o in self.out) < self.max_new:
            self.step += 1
            with self.e.tracer.span("iteration", "iteration", step=self.step, tokens=self.B,
                                    phase="verify" if self.gamma else "decode"):
                self._round() if self.gamma else self._decode()
            self._replan()
        self._sync()
        self.stats.decode_s = time.perf_counter() - t0

    def _replan(self) -> None:
        """Ask the controller for the next round's γ (an off round tells it 0 of 0 drafted)."""
        if self.controller is None:
            return
        acc, drafted = getattr(self, "_last_round", ([0], [0]))
        self._last_round = ([0], [0])
        self.gamma = min(max(int(self.controller.observe(acc, drafted)), 0), self.gmax)

    def _decode(self) -> None:
        e, B = self.e, self.B
        self._phase("decode")
        logits = e.model.logits(e.model.forward(self.pending[:, None], e.cache, "decode")[:, -1])
        nxt = sample(logits, self.T, self.gen)
        e.cache.lengths[:B] += 1
        for o, t in zip(self.out, nxt.tolist()):
            o.append(t)
        self.pending = nxt

    def _round(self) -> None:
        if self.e.policy.tree_width > 1:
            return tree_round(self)
        e, B, g = self.e, self.B, self.gamma
        active = [len(o) < self.max_new for o in self.out]
        self._phase("draft")
        drafts = q = None
        if e.graphs is not None and DraftGraph.usable(e, self.T):
            drafts = e.graphs.draft(self.pending, g, self.step)
        if drafts is None and e.draft is None:
            drafts, q = draft_self(e.model, e.cache, self.pending, g, self.T, self.gen, self.step)
        elif drafts is None:
            prev = torch.tensor([(s + o)[-2] for s, o in zip(self.seqs, self.out)], device=e.device)
            e.draft_cache.lengths[:B] = e.cache.lengths[:B]
            drafts, q = draft_separate(e.draft, e.draft_cache, prev, self.pending, g, self.T,
                                       self.gen, self.step)
        self._phase("verify")
        with e.tracer.span("verify", "verify", step=self.step, phase="verify", tokens=B * (g + 1)):
            logits = verify(e.model, e.cache, self.pending, drafts)
        if self.alpha is not None:
            n, nxt = accept_synthetic(g, logits, self.alpha, self.coin, self.T, self.gen)
        elif self.T == 0:
            n, nxt = accept_greedy(drafts, logits)
        else:
            n, nxt = accept_sampling(drafts, q, probs(logits, self.T), self.gen)
        self._commit(n.tolist(), nxt.tolist(), drafts.tolist(), active)

    def _commit(
        self, n: list[int], nxt: list[int], drafts: list[list[int]], active: list[bool]
    ) -> None:
        e, st = self.e, self.stats
        new_pending = self.pending.tolist()
        for b in range(self.B):
            if not active[b]:  # done: recompute the same positions next round, keep nothing
                continue
            self.out[b] += drafts[b][: n[b]] + [nxt[b]]
            e.cache.lengths[b] += n[b] + 1
            new_pending[b] = nxt[b]
            st.sequence_rounds += 1
            for i in range(n[b]):
                st.accept_counts[i] += 1
        st.verifications += 1
        st.gamma_by_round.append(len(drafts[0]) if drafts else 0)
        live = [b for b in range(self.B) if active[b]]
        self._last_round = ([n[b] for b in live], [len(drafts[b]) for b in live])
        self.pending = torch.tensor(new_pending, device=e.device)
        e.tracer.instant("accept", "accept", step=self.step, phase="verify",
                         tokens=sum(n[b] + 1 for b in range(self.B) if active[b]),
                         accepted=[n[b] if active[b] else None for b in range(self.B)])

    def result(self, record_routing: bool) -> GenerationResult:
        st, store = self.stats, self.e.store.stats
        toks = [o[: self.max_new] for o in self.out]
        st.new_tokens = sum(map(len, toks))
        decoded = st.new_tokens - self.B  # the first token of each sequence came from the prefill
        st.tokens_per_s = decoded / st.decode_s if st.decode_s > 0 else 0.0
        if st.sequence_rounds:
            st.accepted_per_verify = sum(st.accept_counts) / st.sequence_rounds
            st.tokens_per_verify = st.accepted_per_verify + 1
        st.bytes_by_link = dict(store.bytes_by_link)
        st.weight_bytes_h2d, st.experts_fetched = store.weight_bytes_h2d, store.experts_fetched
        st.prefetched, st.hits, st.misses = store.prefetched, store.hits, store.misses
        st.policy_counters = self.e.provider.stats()
        return GenerationResult(
            toks, st, self.e.provider.routing_record() if record_routing else None
        )
