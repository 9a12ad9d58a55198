"""The simulated machine: GPU stream, copy engines (one per PCIe direction), CPU, SSD, expert slots.

Each resource counts its busy time and bytes; durations always come from specmoe.costs.
Copies: one SimPy PriorityResource per direction, capacity 1 (one copy in flight per engine; a
second engine on the same direction would not add PCIe bandwidth). A batch of expert copies is
one process that copies expert after expert; demand fetches outrank prefetches, and batches of
one class keep the order they were issued in (priority = (class, batch number)), so a layer's
prefetch is not interleaved with the next layer's.
"""
from __future__ import annotations

import itertools

import numpy as np
import simpy

from specmoe.measure.trace import event as trace_event

DEMAND, PREFETCH = 0, 1


class Recorder:
    """Collects trace events (specmoe.trace/1) when asked; the simulator skips it otherwise."""

    def __init__(self):
        self.events: list[dict] = []

    def span(self, name, cat, start_s, dur_s, stream, **fields):
        self.events.append(
            trace_event(name, cat, start_s * 1e6, dur_s * 1e6, stream=stream, **fields)
        )


class Meter:
    """Busy time, bytes and operation count of one resource."""

    def __init__(self, name: str):
        self.name, self.busy, self.bytes, self.ops = name, 0.0, 0.0, 0

    def add(self, seconds: float, nbytes: float = 0.0, ops: int = 1) -> None:
        self.busy += seconds
        self.bytes += nbytes
        self.ops += ops

    def snapshot(self) -> tuple[float, float, int]:
        return self.busy, self.bytes, self.ops


class CopyEngine:
    """One direction of the host-GPU link: copies run one at a time, in priority order."""

    def __init__(self, env: simpy.Environment, name: str, rec: Recorder | None):
        self.env, self.name, self.rec = env, name, rec
        self.res = simpy.PriorityResource(env, capacity=1)
        self.meter = Meter(name)
        self._batch = itertools.count()

    def copy(
        self,
        n: int,
        each_s: float,
        each_bytes: float,
        cls: int = DEMAND,
        label: str = "expert",
        ssd=None,
        ssd_s: float = 0.0,
        ids=None,
        **fields,
    ) -> simpy.Process:
        """Start `n` copies of `each_bytes` (one expert, or one activation buffer); returns the
        process whose completion means all have arrived."""
        prio = (cls, next(self._batch))
        return self.env.process(
            self._copies(n, each_s, each_bytes, prio, label, ssd, ssd_s, ids, fields)
        )

    def _copies(self, n, each_s, each_bytes, prio, label, ssd, ssd_s, ids, fields):
        env, res, rec = self.env, self.res, self.rec
        for i in range(n):
            # the expert's share on SSD is read into host memory first
            if ssd is not None:
                yield from ssd.read(ssd_s, ids[i] if ids is not None else None, **fields)
            with res.request(priority=prio) as req:
                yield req
                start = env.now
                yield env.timeout(each_s)
            self.meter.add(each_s, each_bytes)
            if rec is not None:
                expert = int(ids[i]) if ids is not None else None
                rec.span(
                    f"{label} {self.name}",
                    self.name,
                    start,
                    each_s,
                    self.name,
                    bytes=each_bytes,
                    expert=expert,
                    prefetch=prio[0] == PREFETCH,
                    **fields,
                )


class Ssd:
    """Host SSD: reads one expert share at a time."""

    def __init__(self, env: simpy.Environment, rec: Recorder | None, bytes_per_read: float):
        self.env, self.rec, self.nbytes = env, rec, bytes_per_read
        self.res = simpy.Resource(env, capacity=1)
        self.meter = Meter("ssd")

    def read(self, seconds: float, expert=None, **fields):
        with self.res.request() as req:
            yield req
            start = self.env.now
            yield self.env.timeout(seconds)
        self.meter.add(seconds, self.nbytes)
        if self.rec is not None:
            self.rec.span("ssd read", "ssd", start, seconds, "ssd", bytes=self.nbytes,
                          expert=None if expert is None else int(expert), **fields)


class Cpu:
    """Host CPU running expert FFNs. One expert at a time: the cost model's cpu_expert already
    spreads one expert over all cores and the whole DRAM bandwidth (Fiddler's setting)."""

    def __init__(self, env: simpy.Environment, rec: Recorder | None):
        self.env, self.rec = env, rec
        self.res = simpy.Resource(env, capacity=1)
        self.meter = Meter("cpu")

    def experts(
        self,
        durations,
        tokens,
        ids,
        d2h: CopyEngine,
        h2d: CopyEngine,
        act_s: float,
        act_bytes: float,
        **fields,
    ) -> simpy.Process:
        return self.env.process(
            self._run(durations, tokens, ids, d2h, h2d, act_s, act_bytes, fields)
        )

    def _run(self, durations, tokens, ids, d2h, h2d, act_s, act_bytes, fields):
        """Hidden states go down, the experts run one after another, results come back up."""
        env, rec = self.env, self.rec
        yield d2h.copy(1, act_s, act_bytes, label="activations", **fields)
        with self.res.request() as req:
            yield req
            for i, d in enumerate(durations):
                start = env.now
                yield env.timeout(d)
                if rec is not None:
                    rec.span("cpu expert", "cpu_expert", start, d, "cpu", expert=int(ids[i]),
                             tokens=int(tokens[i]), **fields)
        self.meter.add(float(np.sum(durations)), 0.0, len(durations))
        yield h2d.copy(1, act_s, act_bytes, label="activations", **fields)


class ExpertSlots:
    """Experts resident in HBM: a pinned set per MoE layer plus `lru_slots` slots shared by all
    layers holding the most recently used unpinned experts (Policy.resident_experts, lru_slots).

    Vectorised: `resident` is [L, E] bool. After a pass, `touch` marks the used experts most recent
    and keeps the `lru_slots` most recent unpinned ones over all layers (ties within a pass: more
    tokens first). Fetched non-resident experts sit in staging buffers until their layer has run;
    staging does not block (it is not a SimPy Container): the simulator reports its high-water mark
    in the memory figure and `fits` says whether it would have fitted.
    """

    def __init__(self, num_layers: int, num_experts: int, pinned: np.ndarray | None = None,
                 lru_slots: int = 0):
        self.L, self.E = num_layers, num_experts
        self.pinned = np.zeros((num_layers, num_experts), bool) if pinned is None else pinned.copy()
        self.lru_slots = int(lru_slots)
        self.resident = self.pinned.copy()
        self.last_use = np.full((num_layers, num_experts), -1.0)
        self.clock = 0

    @property
    def per_layer(self) -> float:
        """Mean experts resident per layer: pinned plus a layer's share of the LRU slots."""
        return float(self.pinned.sum(axis=1).mean()) + self.lru_slots / self.L

    def set_resident(self, mask: np.ndarray) -> None:
        self.resident = mask.copy()
        self.pinned = mask.copy()

    def touch(self, counts: np.ndarray) -> None:
        """LRU update after a pass that used experts with counts[l, e] > 0 tokens."""
        if not self.lru_slots:
            return
        self.clock += 1
        used = counts > 0
        self.last_use[used] = self.clock
        # tie-break within a pass, < 1
        share = counts / (counts.sum(axis=1, keepdims=True) + 1.0)
        score = np.where(self.pinned | (self.last_use < 0), -1.0, self.last_use + share).ravel()
        keep = np.zeros(score.shape, bool)
        top = np.argsort(-score, kind="stable")[:self.lru_slots]
        keep[top[score[top] > -1.0]] = True
        self.resident = self.pinned | keep.reshape(self.pinned.shape)
