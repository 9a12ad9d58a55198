"""Engine side of the policy vocabulary: expert providers that move experts as each policy says.

Every provider follows one path per MoE layer (OnDemand.moe):
  route ids -> split needed experts into device / host -> acquire device ones (fetch misses) ->
  hook (overlap prefetches the next layer) -> compute -> release (free, cache or pin).
Policies differ only in the split, the hook and what they keep. Names and parameters are those of
specmoe.inputs.policies.Policy; `prefetch_hit_rate` is an input of the models, here it is measured.

Host synchronisation: a policy that fetches must know which experts the router chose, so its
layer reads the routing once (`_read_routing`; Overlap's next-layer prediction rides along in the
same read). Nothing else in the per-layer path reads the device: slot tables go up through pinned
staging buffers (moe.upload_table), and SpecMoE's draft layers read nothing at all (their tables
depend only on the resident draft set, which the host knows; ids -> slot is a gather on the GPU
inside the fused MoE). Counters and routing records that need ids keep device tensors and are
resolved once, after the run.
"""
from __future__ import annotations

import random
from collections import Counter

import torch
from specmoe.engine.affinity import affinity_ranking, substitute
from specmoe.engine.config import MoEConfig
from specmoe.engine.expert_store import ExpertStore
from specmoe.engine.moe import run_slots, upload_table
from specmoe.engine.tracer import NullTracer

from specmoe.errors import SpecMoEError
from specmoe.inputs.policies import Policy

ENGINE_POLICIES = ("ondemand", "overlap", "caching", "cpu", "specmoe", "eagle")
DEFAULT_PINNED_FRACTION = 0.1  # "pin e.g. the top 10%" when Policy.resident_experts is None
DEFAULT_CPU_THRESHOLD = 8     # tokens: at most this many run on the host (Fiddler's choice)


class OnDemand:
    """Fetch each needed expert when its layer runs; nothing stays resident."""

    def __init__(
        self,
        policy: Policy,
        cfg: MoEConfig,
        store: ExpertStore,
        gates: list[torch.Tensor],
        tracer=None,
        seed: int = 0,
        **_opts,
    ) -> None:
        self.policy, self.cfg, self.store, self.gates = policy, cfg, store, gates
        self.tracer = tracer or NullTracer()
        self.seed = seed
        self.record: list[dict] | None = None
        self.step = 0
        self.counters: Counter = Counter()
        self.device_counters: dict[str, torch.Tensor] = {}  # accumulated on the device
        self.in_graph = False  # set by graphs.DraftGraph while it captures (it does the waits)

    @staticmethod
    def slots_needed(policy: Policy, cfg: MoEConfig) -> int:
        return cfg.experts

    def reset(self, record: bool = False) -> None:
        self.store.reset()
        self.record = [] if record else None
        self.counters = Counter()
        for t in self.device_counters.values():  # zeroed in place: a CUDA graph may hold them
            t.zero_()
        self.setup()

    def setup(self) -> None:
        """Initial residency, before the prefill."""

    def set_step(self, step: int, phase: str) -> None:
        self.step = self.store.step = step
        self.store.phase = phase

    # ------------------------------------------------------------------ the per-layer path

    def moe(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
            phase: str) -> torch.Tensor:
        ids_host, predicted = self._read_routing(layer, x, ids)
        counts = Counter(e for row in ids_host for e in row)
        needed = sorted(counts)
        self._record(layer, phase, ids_host)
        on_device, on_host = self.split(layer, counts, phase)
        slots = {e: self.store.acquire(layer, e) for e in on_device}
        self.hook(layer, predicted, phase)
        self.store.wait(slots.values())
        table = [-1] * self.cfg.experts
        for e, s in slots.items():
            table[e] = s
        slot_of = upload_table(table, x.device)
        y = run_slots(x, ids, weights, slot_of, slots.values(), self.store.w13, self.store.w2,
                      self.tracer, layer, phase, used=len(set(slots.values())))
        if on_host:
            y = y + self.host_experts(layer, x, ids, weights, on_host, phase)
        self.release(layer, needed, on_device, counts, phase)
        return y

    def predict(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        """Device tensor of experts to prefetch for a later layer (read with the routing),
        or None."""
        return None

    def _read_routing(self, layer: int, x: torch.Tensor,
                      ids: torch.Tensor) -> tuple[list[list[int]], list[int] | None]:
        """The one device->host read of a fetching layer: its routing ids (and the prediction)."""
        pred = self.predict(layer, x)
        if pred is None:
            return ids.tolist(), None
        flat = torch.cat((ids.reshape(-1), pred.reshape(-1).to(ids.dtype))).tolist()
        n, k = ids.shape[0], ids.shape[1]
        return [flat[r * k:(r + 1) * k] for r in range(n)], flat[n * k:]

    def split(self, layer: int, counts: Counter, phase: str) -> tuple[list[int], list[int]]:
        """(experts computed on the device, experts computed on the host)."""
        return sorted(counts), []

    def hook(self, layer: int, predicted: list[int] | None, phase: str) -> None:
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
        out = dict(self.counters)
        for k, v in self.device_counters.items():  # resolved once, after the run
            out[k] = out.get(k, 0) + int(v)
        return out

    def routing_record(self) -> list[dict] | None:
        """The routing record with device tensors (draft layers) turned into lists."""
        if self.record is None:
            return None
        for r in self.record:
            if isinstance(r["ids"], torch.Tensor):
                r["ids"] = r["ids"].tolist()
                serve = r.pop("serve", None)
                if serve is not None:
                    r["served"] = [[serve[e] for e in row] for row in r["ids"]]
        return self.record


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

    def predict(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        nxt = layer + 1
        if nxt >= self.cfg.layers or x.shape[0] == 0:
            return None
        return torch.topk(x @ self.gates[nxt].t(), self.cfg.top_k, dim=-1).indices

    def hook(self, layer: int, predicted: list[int] | None, phase: str) -> None:
        if predicted is None:
            return
        nxt = layer + 1
        self.prefetched[nxt] = set(predicted)
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
    activations cross the link); one with many tokens is fetched. Hot experts
    pinned as in Caching."""

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
            tok = self.tracer.begin(name="cpu_expert")
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
            raise SpecMoEError(
                f"draft_experts={n}: the model has only {self.cfg.experts} experts per layer"
            )
        self.n = n
        self.rank = (
            affinity
            if affinity is not None
            else affinity_ranking(self.store.host, self.store.device)
        )

    @staticmethod
    def slots_needed(policy: Policy, cfg: MoEConfig) -> int:
        return cfg.layers * policy.draft_experts + cfg.experts

    def setup(self) -> None:
        self.setup_tables()
        if self.policy.draft_set == "random":
            rng = random.Random(self.seed)
            for l in range(self.cfg.layers):
                for e in sorted(rng.sample(range(self.cfg.experts), self.n)):
                    self.store.prefetch(l, e)
                    self.store.release(l, e, "pin")

    def draft_set(self, layer: int) -> list[int]:
        return sorted(self.store.pinned_experts(layer))

    def setup_tables(self) -> None:
        self._tables: dict[int, tuple[frozenset, list[int], torch.Tensor, list[int]]] = {}
        if not hasattr(self, "_static"):
            self._static: dict[int, torch.Tensor] = {}

    def draft_tables(self, layer: int, device: torch.device):
        """(serve, device tables [2, E] int32: slot serving each expert | 1 if resident, slots).
        Rebuilt only when the layer's draft set changed (after a verification), so the γ draft
        steps in between upload nothing. The device tables live in one buffer per layer, updated
        in place, so a captured draft step (graphs.DraftGraph) sees the current ones."""
        resident = self.store.pinned_experts(layer)
        key = frozenset((e, self.store.lookup(layer, e)) for e in resident)
        cached = self._tables.get(layer)
        if cached is None or cached[0] != key:
            serve = (substitute(self.rank[layer], resident) if self.policy.substitution
                     else [e if e in resident else -1 for e in range(self.cfg.experts)])
            slot = [self.store.lookup(layer, e) if e >= 0 else -1 for e in serve]
            is_res = [int(e in resident) for e in range(self.cfg.experts)]
            dev = upload_table(slot + is_res, device).view(2, self.cfg.experts)
            static = self._static.get(layer)
            if static is None or static.device != dev.device:
                static = self._static[layer] = dev
            else:
                static.copy_(dev)
            cached = (key, serve, static, sorted({s for s in slot if s >= 0}))
            self._tables[layer] = cached
        return cached[1:]

    def moe(self, layer, x, ids, weights, phase):
        if phase != "draft":
            return super().moe(layer, x, ids, weights, phase)
        serve, tables, slots = self.draft_tables(layer, x.device)
        if self.record is not None:
            self.record.append({"step": self.step, "phase": phase, "layer": layer, "ids": ids,
                                "serve": serve, "resident": sorted(self.store.resident(layer))})
        self.counters["draft_pairs"] += ids.numel()
        off = (tables[1].long()[ids] == 0).sum()  # pairs whose expert is not resident, on device
        acc = self.device_counters.get("substituted")
        if acc is None:
            self.device_counters["substituted"] = off.clone()
        else:
            acc.add_(off)  # in place: a captured draft step keeps counting on replay
        if not self.in_graph:
            self.store.wait(slots)
        return run_slots(x, ids, weights, tables[0], slots, self.store.w13, self.store.w2,
                         self.tracer, layer, phase)

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


__all__ = [
    "ENGINE_POLICIES",
    "default_slots",
    "make_provider",
    "provider_class",
    "resolve_residency",
]
