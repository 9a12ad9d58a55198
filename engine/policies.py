"""Engine side of the policy vocabulary: expert providers that move experts as each policy says.

Every provider follows one path per MoE layer (OnDemand.moe):
  route ids -> split needed experts into device / host -> acquire device ones (fetch misses) ->
  hook (overlap prefetches the next layer) -> compute -> release (free, cache or pin).
Policies differ only in the split, the hook and what they keep. Names and parameters are those of
specmoe.inputs.policies.Policy; `prefetch_hit_rate` is an input of the models, here it is measured.
"""
from __future__ import annotations

import random
from collections import Counter

import torch
from specmoe.engine.affinity import affinity_ranking, substitute
from specmoe.engine.config import MoEConfig
from specmoe.engine.expert_store import ExpertStore
from specmoe.engine.moe import run_slots
from specmoe.engine.tracer import NullTracer

from specmoe.errors import SpecMoEError
from specmoe.inputs.policies import Policy

ENGINE_POLICIES = ("ondemand", "overlap", "caching", "cpu", "specmoe", "eagle")
DEFAULT_PINNED_FRACTION = 0.1  # "pin e.g. the top 10%" when Policy.resident_experts is None
DEFAULT_CPU_THRESHOLD = 8     # tokens: at most this many run on the host (Fiddler's choice)


class OnDemand:
    """Fetch each needed expert when its layer runs; nothing stays resident."""

    def __init__(self, policy: Policy, cfg: MoEConfig, store: ExpertStore, gates: list[torch.Tensor],
                 tracer=None, seed: int = 0, **_opts) -> None:
        self.policy, self.cfg, self.store, self.gates = policy, cfg, store, gates
        self.tracer = tracer or NullTracer()
        self.seed = seed
        self.record: list[dict] | None = None
        self.step = 0
        self.counters: Counter = Counter()

    @staticmethod
    def slots_needed(policy: Policy, cfg: MoEConfig) -> int:
        return cfg.experts

    def reset(self, record: bool = False) -> None:
        self.store.reset()
        self.record = [] if record else None
        self.counters = Counter()
        self.setup()

    def setup(self) -> None:
        """Initial residency, before the prefill."""

    def set_step(self, step: int, phase: str) -> None:
        self.step = self.store.step = step
        self.store.phase = phase

    # ------------------------------------------------------------------ the per-layer path

    def moe(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
            phase: str) -> torch.Tensor:
        ids_host = ids.tolist()
        counts = Counter(e for row in ids_host for e in row)
        needed = sorted(counts)
        self._record(layer, phase, ids_host)
        on_device, on_host = self.split(layer, counts, phase)
        slots = {e: self.store.acquire(layer, e) for e in on_device}
        self.hook(layer, x, phase)
        self.store.wait(slots.values())
        table = [-1] * self.cfg.experts
        for e, s in slots.items():
            table[e] = s
        y = run_slots(x, ids, weights, table, self.store.w13, self.store.w2, self.tracer, layer,
                      phase, present=set(needed))
        if on_host:
            y = y + self.host_experts(layer, x, ids, weights, on_host, phase)
        self.release(layer, needed, on_device, counts, phase)
        return y

    def split(self, layer: int, counts: Counter, phase: str) -> tuple[list[int], list[int]]:
        """(experts computed on the device, experts computed on the host)."""
        return sorted(counts), []

    def hook(self, layer: int, x: torch.Tensor, phase: str) -> None:
        """Runs after this layer's fetches were issued, before its compute."""

    def release(self, layer: int, needed: list[int], on_device: list[int], counts: Counter,
                phase: str) -> None:
        for e in on_device:
            self.store.release(layer, e, "free")

    def host_experts(self, layer, x, ids, weights, experts, phase) -> torch.Tensor:
        raise NotImplementedError

    def _record(self, layer: int, phase: str, ids_host: list, **extra) -> None:
        if self.record is not None:
            self.record.append(dict(step=self.step, phase=phase, layer=layer, ids=ids_host,
                                    resident=sorted(self.store.resident(layer)), **extra))

    def hottest(self, layer: int, counts: Counter, n: int) -> list[int]:
        """n most used experts (ties: already pinned first, then lower id)."""
        pinned = self.store.pinned_experts(layer)
        cand = set(counts) | pinned
        return sorted(cand, key=lambda e: (-counts.get(e, 0), e not in pinned, e))[:n]

    def stats(self) -> dict:
        return dict(self.counters)


class Overlap(OnDemand):
    """Prefetch layer l+1's experts, predicted by l+1's router on layer l's MoE input, during l."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.prefetched: dict[int, set[int]] = {}

    @staticmethod
    def slots_needed(policy: Policy, cfg: MoEConfig) -> int:
        return 2 * cfg.experts

    def setup(self) -> None:
        self.prefetched = {}

    def hook(self, layer: int, x: torch.Tensor, phase: str) -> None:
        nxt = layer + 1
        if nxt >= self.cfg.layers or x.shape[0] == 0:
            return
        pred = torch.topk(x @ self.gates[nxt].t(), self.cfg.top_k, dim=-1).indices
        self.prefetched[nxt] = set(pred.flatten().tolist())
        for e in sorted(self.prefetched[nxt]):
            self.store.prefetch(nxt, e)

    def release(self, layer, needed, on_device, counts, phase) -> None:
        pre = self.prefetched.pop(layer, set())
        self.counters["prefetch_useful"] += len(pre & set(needed))
        self.counters["prefetch_wasted"] += len(pre - set(needed))
        for e in sorted(set(on_device) | pre):
            self.store.release(layer, e, "free")


class Caching(OnDemand):
    """Pin the hottest `resident_experts` of each layer (hotness from the prefill, promoted for
    free since the prefill just fetched them); keep the `lru_slots` most recently used others in
    slots shared by all layers. One layer's worth of staging slots is not a cache: it is freed."""

    @staticmethod
    def pinned_per_layer(policy: Policy, cfg: MoEConfig) -> int:
        return min(cfg.experts, resolve_residency(policy, cfg).resident_experts)

    @classmethod
    def slots_needed(cls, policy: Policy, cfg: MoEConfig) -> int:
        lru = policy.lru_slots if cls.keep == "cache" else 0
        return cfg.layers * cls.pinned_per_layer(policy, cfg) + cfg.experts + lru

    keep = "cache"          # what happens to a fetched expert that is not pinned
    fetch_hot = False       # pin hot experts the prefill did not fetch (fetching them now)

    def release(self, layer, needed, on_device, counts, phase) -> None:
        hot = set()
        if phase == "prefill":
            hot = set(self.hottest(layer, counts, self.pinned_per_layer(self.policy, self.cfg)))
        for e in on_device:
            self.store.release(layer, e, "pin" if e in hot else self.keep)
        self.store.trim_cache(self.policy.lru_slots)
        for e in sorted(hot - set(on_device)) if self.fetch_hot else ():
            self.store.prefetch(layer, e)
            self.store.release(layer, e, "pin")


class CpuOffload(Caching):
    """Fiddler: a non-resident expert with few tokens runs on the host with the host weights (only
    activations cross the link); one with many tokens is fetched. Hot experts pinned as in Caching."""

    keep = "free"
    fetch_hot = True  # the prefill ran most experts on the host; the hot ones go to the device now

    def __init__(self, *args, cpu_threshold: int | None = None, **kw) -> None:
        super().__init__(*args, **kw)
        self.threshold = DEFAULT_CPU_THRESHOLD if cpu_threshold is None else int(cpu_threshold)

    def split(self, layer, counts, phase):
        resident = self.store.resident(layer)
        host = sorted(e for e, n in counts.items() if e not in resident and n <= self.threshold)
        return sorted(set(counts) - set(host)), host

    def host_experts(self, layer, x, ids, weights, experts, phase) -> torch.Tensor:
        cfg, buf = self.cfg, self.store.host[layer]
        i, h = cfg.expert_ffn, cfg.hidden
        y = torch.zeros_like(x)
        for e in experts:
            rows, pos = (ids == e).nonzero(as_tuple=True)
            tok = self.tracer.begin()
            xh = x[rows].cpu()
            row = buf[e]
            out = (torch.nn.functional.silu(xh @ row[: i * h].view(i, h).t())
                   * (xh @ row[i * h: 2 * i * h].view(i, h).t())) @ row[2 * i * h:].view(h, i).t()
            y.index_add_(0, rows, (out.to(x.device) * weights[rows, pos, None]).to(x.dtype))
            n = int(rows.numel())
            act = n * h * x.element_size()
            self.store.count_activations(d2h=act, h2d=act)
            self.counters["cpu_experts"] += 1
            self.counters["cpu_tokens"] += n
            self.tracer.end(tok, "cpu_expert", "cpu_expert", layer=layer, expert=e, phase=phase,
                            tokens=n, flops=6 * n * h * i, bytes=2 * act, shape=[n, h, i],
                            stream="host")
        return y


class SpecMoE(OnDemand):
    """N resident draft experts per layer; drafting substitutes non-resident experts with the most
    similar resident one and moves nothing; verification (and prefill, and decode when speculation
    is off) fetches each needed non-resident expert once per layer per step. HotTemporal: after a
    verification the N most used experts of that layer become the draft set, free since resident."""

    def __init__(self, *args, affinity: list | None = None, **kw) -> None:
        super().__init__(*args, **kw)
        n = self.policy.draft_experts
        if n > self.cfg.experts:
            raise SpecMoEError(f"draft_experts={n}: the model has only {self.cfg.experts} experts per layer")
        self.n = n
        self.rank = affinity if affinity is not None else affinity_ranking(self.store.host, self.store.device)

    @staticmethod
    def slots_needed(policy: Policy, cfg: MoEConfig) -> int:
        return cfg.layers * policy.draft_experts + cfg.experts

    def setup(self) -> None:
        if self.policy.draft_set == "random":
            rng = random.Random(self.seed)
            for l in range(self.cfg.layers):
                for e in sorted(rng.sample(range(self.cfg.experts), self.n)):
                    self.store.prefetch(l, e)
                    self.store.release(l, e, "pin")

    def draft_set(self, layer: int) -> list[int]:
        return sorted(self.store.pinned_experts(layer))

    def moe(self, layer, x, ids, weights, phase):
        if phase != "draft":
            return super().moe(layer, x, ids, weights, phase)
        resident = self.store.pinned_experts(layer)
        serve = (substitute(self.rank[layer], resident) if self.policy.substitution
                 else [e if e in resident else -1 for e in range(self.cfg.experts)])
        ids_host = ids.tolist()
        served = [[serve[e] for e in row] for row in ids_host]
        self._record(layer, phase, ids_host, served=served)
        self.counters["draft_pairs"] += len(ids_host) * self.cfg.top_k
        self.counters["substituted"] += sum(a != b for r, s in zip(ids_host, served) for a, b in zip(r, s))
        table = [self.store.lookup(layer, e) if e >= 0 else -1 for e in serve]
        present = {e for row in ids_host for e in row}
        self.store.wait({table[e] for e in present} - {-1})
        return run_slots(x, ids, weights, table, self.store.w13, self.store.w2, self.tracer,
                         layer, phase, present=present)

    def release(self, layer, needed, on_device, counts, phase) -> None:
        update = phase == "prefill" and (self.policy.draft_set != "random") or (
            phase == "verify" and self.policy.draft_set == "hottemporal")
        old = self.store.pinned_experts(layer)
        new = set(self.hottest(layer, counts, self.n)) if update else old
        for e in on_device:
            self.store.release(layer, e, "pin" if e in new else "free")
        for e in old - new:
            self.store.unpin(layer, e)
        if update and len(new) < self.n:  # a short prompt touched fewer than N experts: fill up
            rest = [e for e in range(self.cfg.experts) if e not in new][: self.n - len(new)]
            for e in rest:
                self.store.prefetch(layer, e)
                self.store.release(layer, e, "pin")


class Eagle(OnDemand):
    """Separate draft model (all its experts resident); the target's experts fetched on demand."""


PROVIDERS = {"ondemand": OnDemand, "overlap": Overlap, "caching": Caching, "cpu": CpuOffload,
             "specmoe": SpecMoE, "eagle": Eagle}


def provider_class(policy: Policy):
    if policy.name not in PROVIDERS:
        raise SpecMoEError(f"policy={policy.name!r} is not implemented in the engine; "
                           f"implemented: {', '.join(ENGINE_POLICIES)}")
    return PROVIDERS[policy.name]


def resolve_residency(policy: Policy, cfg: MoEConfig) -> Policy:
    """The engine needs a number: resident_experts=None pins DEFAULT_PINNED_FRACTION of a layer."""
    if policy.name in ("caching", "cpu") and policy.resident_experts is None:
        return policy.with_(resident_experts=round(DEFAULT_PINNED_FRACTION * cfg.experts))
    return policy


def default_slots(policy: Policy, cfg: MoEConfig) -> int:
    return provider_class(policy).slots_needed(policy, cfg)


def make_provider(policy: Policy, cfg: MoEConfig, store: ExpertStore, gates, tracer=None, **opts):
    return provider_class(policy)(policy, cfg, store, gates, tracer, **opts)


__all__ = ["ENGINE_POLICIES", "default_slots", "make_provider", "provider_class", "resolve_residency"]
