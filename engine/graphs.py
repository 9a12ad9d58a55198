"""CUDA-graph capture of SpecMoE's self-draft step (greedy), so a draft step is one replay instead
of ~35 eager launches and their Python per layer.

A draft step reads nothing from the host (policies.py: its expert tables depend on the resident
draft set only), so it can be captured: static buffers hold the input token and the cache lengths
per sequence; the captured body runs the model over them (model.forward_at, with the cache's full
length as the mask bound: the kernels mask by the lengths), takes the argmax, writes it back as
the next input and advances the lengths, so γ replays draft γ tokens. Before a round's replays the
host refreshes what the graph reads in place: the per-layer substitution tables (rebuilt only
when a verification changed a draft set) and the stream's waits on the draft experts' copies.

Guarded: CUDA only, temperature 0, self-drafting SpecMoE, no routing record (the record needs
per-layer ids). Capture runs after an eager warm-up on a side stream (compiles kernels, runs the
probes), and is kept only if a replay gives the eager step's tokens; anything else warns and the
engine drafts eagerly. Per batch size one graph. Op spans inside a replay are not traced; the
draft_step span around it is.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

import torch
from specmoe.engine.tracer import NullTracer


@dataclass
class _Captured:
    graph: object
    tok: torch.Tensor   # [B] int64: input token, then the drafted one
    lens: torch.Tensor  # [B] int64: cache length = position of the input token


class DraftGraph:
    def __init__(self, engine) -> None:
        self.e = engine
        self.graphs: dict[int, _Captured | None] = {}

    @staticmethod
    def usable(engine, temperature: float) -> bool:
        from specmoe.engine.policies import SpecMoE

        return (engine.device.type == "cuda" and temperature == 0 and engine.draft is None
                and isinstance(engine.provider, SpecMoE) and engine.provider.record is None)

    # ------------------------------------------------------------------ drafting

    def draft(self, pending: torch.Tensor, gamma: int, step: int) -> torch.Tensor | None:
        """Drafts [B, gamma] by graph replay, or None (then the caller drafts eagerly)."""
        B = pending.shape[0]
        if B not in self.graphs:
            self.graphs[B] = self._capture(pending)
        cap = self.graphs[B]
        if cap is None:
            return None
        self._refresh()
        self._load(cap, pending)
        out, tracer = [], self.e.tracer
        for i in range(gamma):
            with tracer.span("draft_step", "draft_step", step=step, index=i, phase="draft",
                             tokens=B, graph=True):
                cap.graph.replay()
            out.append(cap.tok.clone())
        p = self.e.provider
        p.counters["draft_pairs"] += gamma * B * self.e.cfg.top_k * self.e.cfg.layers
        return torch.stack(out, 1)

    def _refresh(self) -> None:
        """Tables the graph reads, updated in place; the stream waits for the draft experts."""
        p, dev = self.e.provider, self.e.device
        for layer in range(self.e.cfg.layers):
            _, _, slots = p.draft_tables(layer, dev)
            self.e.store.wait(slots)

    def _load(self, cap: _Captured, pending: torch.Tensor) -> None:
        B = pending.shape[0]
        cap.tok.copy_(pending.to(torch.int64))
        lens = self.e.cache.lengths[:B].to(torch.int64)
        if self.e.device.type == "cuda":
            lens = lens.pin_memory()
        cap.lens.copy_(lens.to(self.e.device, non_blocking=True))

    def _body(self, cap: _Captured) -> None:
        m, cache = self.e.model, self.e.cache
        h = m.forward_at(cap.tok[:, None], cap.lens[:, None], cache.seq_len, cache, "draft")
        cap.tok.copy_(m.logits(h[:, -1]).argmax(-1))
        cap.lens.add_(1)

    # ------------------------------------------------------------------ capture

    def _capture(self, pending: torch.Tensor) -> _Captured | None:
        e, p = self.e, self.e.provider
        B, dev = pending.shape[0], e.device
        if int(e.cache.lengths[:B].max()) + 1 >= e.cache.seq_len:
            return None
        saved = (Counter(p.counters), {k: v.clone() for k, v in p.device_counters.items()})
        tracer, e.tracer = e.tracer, NullTracer()
        p.in_graph = True
        cap = _Captured(None, torch.empty(B, dtype=torch.int64, device=dev),
                        torch.empty(B, dtype=torch.int64, device=dev))
        try:
            self._refresh()
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):  # eager warm-up: compiles, probes, allocations
                for _ in range(2):
                    self._load(cap, pending)
                    self._body(cap)
                want = cap.tok.clone()  # the eager first draft token
            torch.cuda.current_stream(dev).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._body(cap)
            cap.graph = graph
            self._load(cap, pending)
            graph.replay()
            if not torch.equal(cap.tok, want):
                warnings.warn("specmoe.engine: the captured draft step disagrees with the eager "
                              "one; drafting eagerly", stacklevel=3)
                cap = None
        except Exception as exc:  # noqa: BLE001 - any capture failure falls back, loudly
            warnings.warn(f"specmoe.engine: draft step not captured ({type(exc).__name__}: "
                          f"{exc}); drafting eagerly", stacklevel=3)
            cap = None
        finally:
            p.in_graph = False
            e.tracer = tracer
            p.counters = saved[0]
            for k, v in p.device_counters.items():
                if k in saved[1]:
                    v.copy_(saved[1][k])
                else:
                    v.zero_()
        return cap
