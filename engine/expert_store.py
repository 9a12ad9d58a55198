"""Expert store: host copies of every expert, a fixed pool of device slots, and the copies between.

Host: one buffer per layer, [experts, P] with P = 3*ffn*hidden, each expert one contiguous row
(page-locked when the device is CUDA, so copies are asynchronous DMA). Device: two contiguous
pools, w13 [slots, 2*ffn, hidden] and w2 [slots, hidden, ffn], the layout the fused MoE kernel
addresses by slot; a fetch is two copies (the row's w1|w3 part, then its w2 part).

On CUDA, copies run on a dedicated copy stream: a slot's copy first waits for the event recorded
when its previous contents were last used (no overwrite under a running kernel), and records a
`ready` event that the compute stream waits on before using the slot. On the CPU the "device" is
the CPU and a fetch is a real memcpy from the host buffer into the pool, traced and counted alike.

Slot states: free, cached (evictable, LRU order), pinned (never evicted). A slot in use by the
current layer, or prefetched for the next one, is also locked: never evicted while locked.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from specmoe.engine.config import MoEConfig
from specmoe.engine.tracer import NullTracer

from specmoe.errors import SpecMoEError


@dataclass
class StoreStats:
    bytes_by_link: dict[str, int] = field(default_factory=lambda: {"h2d": 0, "d2h": 0})
    weight_bytes_h2d: int = 0
    experts_fetched: int = 0
    prefetched: int = 0
    hits: int = 0
    misses: int = 0
    # (step, phase, layer, expert, kind) for every weight copy; kind: fetch | prefetch
    log: list[tuple[int, str, int, int, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "log"}


class ExpertStore:
    def __init__(self, cfg: MoEConfig, host: list[torch.Tensor], device: torch.device | str,
                 slots: int, tracer=None) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.host = host
        self.tracer = tracer or NullTracer()
        self.n_slots = slots
        i, h = cfg.expert_ffn, cfg.hidden
        self.split = 2 * i * h  # w1|w3 elements of a host row; w2 follows
        self.w13 = torch.empty(slots, 2 * i, h, dtype=cfg.torch_dtype, device=self.device)
        self.w2 = torch.empty(slots, h, i, dtype=cfg.torch_dtype, device=self.device)
        self.cuda = self.device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(device=self.device) if self.cuda else None
        self.reset()

    def reset(self) -> None:
        """Empty every slot and zero the counters (a fresh run)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.slot_of: dict[tuple[int, int], int] = {}
        self.owner: list[tuple[int, int] | None] = [None] * self.n_slots
        self.free = list(range(self.n_slots - 1, -1, -1))
        self.cached: OrderedDict[int, None] = OrderedDict()
        self.pinned: set[int] = set()
        self.locked: set[int] = set()
        self.ready: list = [None] * self.n_slots
        self.last_use: list = [None] * self.n_slots
        self.stats = StoreStats()
        self.step, self.phase = 0, "prefill"

    # ------------------------------------------------------------------ queries

    def lookup(self, layer: int, expert: int) -> int | None:
        return self.slot_of.get((layer, expert))

    def resident(self, layer: int) -> set[int]:
        return {e for (l, e) in self.slot_of if l == layer}

    def pinned_experts(self, layer: int) -> set[int]:
        return {self.owner[s][1] for s in self.pinned if self.owner[s][0] == layer}

    def table(self, layer: int) -> list[int]:
        """Slot of each expert of `layer`, -1 where not resident."""
        t = [-1] * self.cfg.experts
        for (l, e), s in self.slot_of.items():
            if l == layer:
                t[e] = s
        return t

    # ------------------------------------------------------------------ fetching

    def acquire(self, layer: int, expert: int) -> int:
        """The slot holding the expert, fetching it on a miss;
        the slot stays locked until release."""
        s = self.lookup(layer, expert)
        if s is None:
            self.stats.misses += 1
            s = self._fetch(layer, expert, "fetch")
        else:
            self.stats.hits += 1
            if s in self.cached:
                self.cached.move_to_end(s)
        self.locked.add(s)
        return s

    def prefetch(self, layer: int, expert: int) -> int:
        """Start copying an expert ahead of need (no hit/miss counted); locked until released."""
        s = self.lookup(layer, expert)
        if s is None:
            s = self._fetch(layer, expert, "prefetch")
            self.stats.prefetched += 1
        self.locked.add(s)
        return s

    def wait(self, slots) -> None:
        """Make the compute stream wait until these slots' copies have landed."""
        if self.cuda:
            cur = torch.cuda.current_stream(self.device)
            for s in slots:
                if self.ready[s] is not None:
                    cur.wait_event(self.ready[s])

    def _fetch(self, layer: int, expert: int, kind: str) -> int:
        s = self._take_slot(layer, expert)
        nbytes = self.cfg.expert_bytes
        if self.cuda:
            if self.last_use[s] is not None:
                self.copy_stream.wait_event(self.last_use[s])
            with torch.cuda.stream(self.copy_stream):
                tok = self.tracer.begin(on=self.copy_stream)
                self._copy(s, layer, expert, non_blocking=True)
                ev = torch.cuda.Event()
                ev.record(self.copy_stream)
                self.ready[s] = ev
                self.tracer.end(tok, "h2d", "h2d", on=self.copy_stream, stream="copy", layer=layer,
                                expert=expert, bytes=nbytes, step=self.step, phase=self.phase,
                                kind=kind)
        else:
            tok = self.tracer.begin()
            self._copy(s, layer, expert)
            self.tracer.end(tok, "h2d", "h2d", layer=layer, expert=expert, bytes=nbytes,
                            step=self.step, phase=self.phase, kind=kind, stream="copy")
        st = self.stats
        st.bytes_by_link["h2d"] += nbytes
        st.weight_bytes_h2d += nbytes
        st.experts_fetched += 1
        st.log.append((self.step, self.phase, layer, expert, kind))
        return s

    def _copy(self, s: int, layer: int, expert: int, non_blocking: bool = False) -> None:
        row = self.host[layer][expert]
        self.w13[s].view(-1).copy_(row[: self.split], non_blocking=non_blocking)
        self.w2[s].view(-1).copy_(row[self.split:], non_blocking=non_blocking)

    def _take_slot(self, layer: int, expert: int) -> int:
        if self.free:
            s = self.free.pop()
        else:
            s = next((c for c in self.cached if c not in self.locked), None)
            if s is None:
                raise SpecMoEError(
                    f"expert slot pool exhausted: {self.n_slots} slots, {len(self.pinned)} pinned, "
                    f"{len(self.locked)} in use; pass a larger expert_slots")
            del self.cached[s]
            del self.slot_of[self.owner[s]]
            self._mark_use(s)
        self.owner[s] = (layer, expert)
        self.slot_of[(layer, expert)] = s
        return s

    # ------------------------------------------------------------------ releasing, pinning

    def release(self, layer: int, expert: int, keep: str = "free") -> None:
        """Unlock after use. keep: free (slot reusable now), cache (LRU, evictable), pin.
        A pinned expert stays pinned whatever `keep` says; only unpin() drops it."""
        s = self.slot_of[(layer, expert)]
        self.locked.discard(s)
        self._mark_use(s)
        if s in self.pinned:
            return
        if keep == "pin":
            self.cached.pop(s, None)
            self.pinned.add(s)
        elif keep == "cache":
            self.pinned.discard(s)
            self.cached[s] = None
            self.cached.move_to_end(s)
        elif keep == "free":
            self._drop(s)
        else:
            raise SpecMoEError(f"release keep={keep!r}: allowed free, cache, pin")

    def trim_cache(self, keep: int) -> None:
        """Free the least recently used cached slots beyond `keep` (Policy.lru_slots)."""
        for s in [c for c in self.cached if c not in self.locked][:max(len(self.cached) - keep, 0)]:
            self._drop(s)

    def unpin(self, layer: int, expert: int) -> None:
        """Drop a pinned expert (its slot becomes free)."""
        s = self.slot_of[(layer, expert)]
        if s not in self.locked:
            self._drop(s)
        else:
            self.pinned.discard(s)

    def _drop(self, s: int) -> None:
        # every read of s was launched before now (drafts use pinned slots unlocked)
        self._mark_use(s)
        self.pinned.discard(s)
        self.cached.pop(s, None)
        self.locked.discard(s)
        del self.slot_of[self.owner[s]]
        self.owner[s] = None
        self.free.append(s)

    def _mark_use(self, s: int) -> None:
        """Record where the compute stream is,
        so a later copy into s waits for readers to finish."""
        if self.cuda:
            ev = torch.cuda.Event()
            ev.record(torch.cuda.current_stream(self.device))
            self.last_use[s] = ev

    # ------------------------------------------------------------------ activations (cpu policy)

    def count_activations(self, d2h: int, h2d: int) -> None:
        self.stats.bytes_by_link["d2h"] += d2h
        self.stats.bytes_by_link["h2d"] += h2d
