"""No host stalls in the per-layer path: every read of a tensor's values on the host (.tolist,
.item, .cpu, .numpy, int(), float(), bool()) is counted while a layer runs. A fetching policy
reads its routing once per MoE layer (it cannot know what to fetch otherwise; Overlap's
prediction rides in the same read); SpecMoE's draft layers and every attention block read
nothing. On a GPU these reads are the device syncs; the CUDA version is in test_engine_cuda."""
from collections import defaultdict

import pytest
import torch
from specmoe.engine.config import MoEConfig
from specmoe.engine.generate import Engine
from specmoe.engine.tracer import Tracer
from specmoe.engine.weights import random_model

from specmoe.inputs.policies import make_policy

CFG = MoEConfig(hidden=32, layers=3, heads=4, kv_heads=2, head_dim=8, experts=8, top_k=2,
                expert_ffn=32, vocab=64, max_seq_len=48, max_batch=4)
READS = ("tolist", "item", "cpu", "numpy", "__int__", "__float__", "__bool__")


class ReadCounter:
    """Counts host reads of tensor values while `active` names the code that runs."""

    def __init__(self, monkeypatch):
        self.active = None
        self.calls = defaultdict(list)   # (what, phase) -> reads per call
        for name in READS:
            orig = getattr(torch.Tensor, name)

            def wrap(t, *a, _orig=orig, _name=name, **k):
                if self.active is not None:
                    self.calls[self.active][-1].append(_name)
                return _orig(t, *a, **k)
            monkeypatch.setattr(torch.Tensor, name, wrap)

    def watch(self, obj, method: str, what: str, phase_of):
        orig = getattr(obj, method)

        def run(*a, **k):
            key = (what, phase_of(a, k))
            self.calls[key].append([])
            self.active = key
            try:
                return orig(*a, **k)
            finally:
                self.active = None
        setattr(obj, method, run)


def engine_with_counter(monkeypatch, policy, tracer=None):
    eng = Engine(random_model(CFG, seed=3), policy, tracer=tracer)
    eng.generate([[1, 2, 3], [4, 5, 6, 7]], 3)  # warm-up outside the count
    rc = ReadCounter(monkeypatch)
    rc.watch(eng.provider, "moe", "moe", lambda a, k: a[4] if len(a) > 4 else k["phase"])
    rc.watch(eng.model, "_attention", "attn", lambda a, k: a[-1])
    return eng, rc


@pytest.mark.parametrize("traced", [False, True], ids=["untraced", "traced"])
def test_specmoe_draft_layers_never_read_the_device(monkeypatch, traced):
    pol = make_policy("specmoe", gamma=3, draft_experts=2)
    eng, rc = engine_with_counter(monkeypatch, pol, Tracer("cpu") if traced else None)
    res = eng.generate([[1, 2, 3], [4, 5, 6, 7]], 8, synthetic_acceptance=0.5,
                       record_routing=True)
    draft = rc.calls[("moe", "draft")]
    assert len(draft) == 3 * CFG.layers * res.stats.verifications > 0
    assert all(reads == [] for reads in draft), draft
    for phase in ("prefill", "verify"):
        calls = rc.calls[("moe", phase)]
        assert calls and all(reads == ["tolist"] for reads in calls), (phase, calls)
    attn = [r for (what, _), calls in rc.calls.items() if what == "attn" for r in calls]
    assert attn and all(r == [] for r in attn)
    # what the draft layers did not read is still counted, after the run
    drafts = [r for r in res.routing if r["phase"] == "draft"]
    assert drafts and all(isinstance(r["ids"], list) and len(r["served"]) == len(r["ids"])
                          for r in drafts)
    counters = res.stats.policy_counters
    off = sum(a not in r["resident"] for r in drafts for row in r["ids"] for a in row)
    assert counters["substituted"] == off
    assert counters["draft_pairs"] == sum(len(r["ids"]) * CFG.top_k for r in drafts)


@pytest.mark.parametrize("name,kw", [("ondemand", {}), ("caching", {"resident_experts": 2}),
                                     ("overlap", {})])
def test_fetching_policies_read_the_routing_once_per_layer(monkeypatch, name, kw):
    eng, rc = engine_with_counter(monkeypatch, make_policy(name, **kw))
    eng.generate([[1, 2, 3], [4, 5, 6, 7]], 5)
    for phase in ("prefill", "decode"):
        calls = rc.calls[("moe", phase)]
        assert len(calls) >= CFG.layers
        assert all(reads == ["tolist"] for reads in calls), (phase, calls)


def test_the_captured_draft_body_drafts_what_draft_self_drafts():
    """graphs.DraftGraph captures `_body` (model over static token/length buffers, argmax written
    back, lengths advanced); run eagerly on the CPU, γ calls give draft_self's tokens."""
    from specmoe.engine.graphs import DraftGraph, _Captured
    from specmoe.engine.speculative import draft_self

    eng = Engine(random_model(CFG, seed=5), make_policy("specmoe", gamma=3, draft_experts=2))
    eng.generate([[1, 2, 3], [4, 5, 6, 7]], 4)  # leaves a prefilled cache and a draft set
    eng.provider.set_step(99, "draft")
    pending = torch.tensor([9, 17])
    start = eng.cache.lengths[:2].clone()
    want, _ = draft_self(eng.model, eng.cache, pending, 3, 0.0, None)
    assert torch.equal(eng.cache.lengths[:2], start)
    dg = DraftGraph(eng)
    cap = _Captured(None, torch.empty(2, dtype=torch.int64), torch.empty(2, dtype=torch.int64))
    dg._refresh()
    dg._load(cap, pending)
    got = []
    for _ in range(3):
        dg._body(cap)
        got.append(cap.tok.clone())
    assert torch.equal(torch.stack(got, 1), want)
    assert torch.equal(cap.lens, start + 3)
    assert not DraftGraph.usable(eng, 0.0)  # the CPU drafts eagerly
