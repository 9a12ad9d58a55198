"""Bytes moved equal each policy's accounting, recomputed here from the routing record alone."""
from collections import Counter, defaultdict
from itertools import pairwise

import pytest
import torch
from specmoe.engine.config import MoEConfig
from specmoe.engine.expert_store import ExpertStore
from specmoe.engine.generate import Engine
from specmoe.engine.tracer import Tracer
from specmoe.engine.weights import random_model

from specmoe.errors import SpecMoEError
from specmoe.inputs.policies import make_policy
from specmoe.measure.trace import read_trace

CFG = MoEConfig(hidden=32, layers=3, heads=4, kv_heads=2, head_dim=8, experts=8, top_k=2,
                expert_ffn=32, vocab=64, max_seq_len=48, max_batch=4, dtype="float32")
PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], [10, 11, 12, 13, 40, 41], [3, 3, 3, 3]]
NEW = 12
EB = CFG.expert_bytes


@pytest.fixture(scope="module")
def weights():
    return random_model(CFG, seed=7)


def _run(weights, name, tracer=None, **params):
    eng = Engine(weights, make_policy(name, **params), tracer=tracer)
    res = eng.generate(PROMPTS, NEW, record_routing=True)
    log = defaultdict(list)
    for step, phase, layer, expert, kind in eng.store.stats.log:
        log[(step, phase, layer)].append(expert)
    return eng, res, log


def _needed(rec) -> set[int]:
    return {e for row in rec["ids"] for e in row}


def _hottest(rec, n: int, resident: set[int]) -> set[int]:
    counts = Counter(e for row in rec["ids"] for e in row)
    cand = set(counts) | resident
    return set(sorted(cand, key=lambda e: (-counts.get(e, 0), e not in resident, e))[:n])


def test_ondemand_fetches_distinct_needed_experts_per_layer_per_step(weights, tmp_path):
    tracer = Tracer()
    _, res, log = _run(weights, "ondemand", tracer=tracer)
    assert len(log) == len(res.routing)
    total = 0
    for rec in res.routing:
        fetched = log[(rec["step"], rec["phase"], rec["layer"])]
        assert sorted(fetched) == sorted(_needed(rec))  # each once, nothing else
        total += len(_needed(rec))
    st = res.stats
    assert st.experts_fetched == total and st.misses == total and st.hits == 0
    assert st.weight_bytes_h2d == total * EB == st.bytes_by_link["h2d"]
    assert st.bytes_by_link["d2h"] == 0
    # the trace says the same
    path = tracer.write(tmp_path / "t.jsonl")
    h2d = read_trace(path).by_cat("h2d")
    assert sum(e["bytes"] for e in h2d) == st.weight_bytes_h2d
    assert all(e["bytes"] == EB and "expert" in e and "layer" in e for e in h2d)


@pytest.mark.parametrize("gamma,n", [(3, 2), (5, 1), (2, 4)])
def test_specmoe_fetches_each_needed_nonresident_expert_once_per_verification(weights, gamma, n):
    _, res, log = _run(weights, "specmoe", gamma=gamma, draft_experts=n)
    recs = res.routing
    assert not [k for k in log if k[1] == "draft"]  # drafting moves nothing
    verifies = 0
    for rec in recs:
        key = (rec["step"], rec["phase"], rec["layer"])
        if rec["phase"] == "draft":
            assert len(rec["resident"]) == n
            assert {e for row in rec["served"] for e in row} <= set(rec["resident"])
        elif rec["phase"] == "verify":
            verifies += 1
            assert len(rec["ids"]) == len(PROMPTS) * (gamma + 1)
            assert sorted(log[key]) == sorted(_needed(rec) - set(rec["resident"]))
    assert verifies == res.stats.verifications * CFG.layers
    # HotTemporal: the draft set of each verification is the N most used of the previous one
    by_layer = defaultdict(list)
    for rec in recs:
        if rec["phase"] in ("prefill", "verify"):
            by_layer[rec["layer"]].append(rec)
    for layer, seq in by_layer.items():
        for prev, nxt in pairwise(seq):
            assert set(nxt["resident"]) == _hottest(prev, n, set(prev["resident"])), (
                layer,
                nxt["step"],
            )
    fetched = sum(map(len, log.values()))
    assert res.stats.weight_bytes_h2d == fetched * EB == res.stats.bytes_by_link["h2d"]


def test_specmoe_moves_fewer_bytes_per_token_than_ondemand(weights):
    _, od, _ = _run(weights, "ondemand")
    _, sp, _ = _run(weights, "specmoe", gamma=4, draft_experts=3)
    assert sp.tokens == od.tokens
    assert sp.stats.weight_bytes_h2d < od.stats.weight_bytes_h2d


def test_caching_hits_misses_and_pins(weights):
    _, res, log = _run(weights, "caching", resident_experts=2)
    st = res.stats
    needed = sum(len(_needed(r)) for r in res.routing)
    assert st.hits + st.misses == needed
    assert st.weight_bytes_h2d == st.misses * EB and st.hits > 0
    for layer in range(CFG.layers):
        pre = next(r for r in res.routing if r["phase"] == "prefill" and r["layer"] == layer)
        later = [r for r in res.routing if r["phase"] == "decode" and r["layer"] == layer]
        hot = _hottest(pre, 2, set())
        assert all(hot <= set(r["resident"]) for r in later)  # pinned for the whole run
    for (step, phase, layer), experts in log.items():
        assert len(experts) == len(set(experts))


def test_overlap_prefetches_count_as_bytes(weights):
    _, res, log = _run(weights, "overlap")
    st, pc = res.stats, res.stats.policy_counters
    needed = sum(len(_needed(r)) for r in res.routing)
    assert st.hits + st.misses == needed
    assert st.experts_fetched == st.misses + st.prefetched
    assert (
        pc["prefetch_useful"] == st.hits
        and pc["prefetch_useful"] + pc["prefetch_wasted"] == st.prefetched
    )
    assert st.weight_bytes_h2d == st.experts_fetched * EB
    assert pc["prefetch_useful"] > 0
    layer0 = [k for k, v in log.items() if k[2] == 0]
    assert all(len(log[k]) == len(set(log[k])) for k in layer0)


def test_cpu_policy_moves_activations_not_weights(weights):
    _, res, _ = _run(weights, "cpu", resident_experts=2)
    st, pc = res.stats, res.stats.policy_counters
    act = pc["cpu_tokens"] * CFG.hidden * 4
    assert pc["cpu_experts"] > 0
    assert st.bytes_by_link["d2h"] == act
    assert st.bytes_by_link["h2d"] == act + st.weight_bytes_h2d
    # only the hot experts pinned after the prefill, plus experts with many tokens
    eng2 = Engine(weights, make_policy("cpu", resident_experts=2), cpu_threshold=0)
    res2 = eng2.generate(PROMPTS, NEW)
    assert res2.tokens == res.tokens and res2.stats.policy_counters.get("cpu_experts", 0) == 0


# ----------------------------------------------------------------------------- store units


def _store(slots=3):
    cfg = CFG.with_(layers=1, experts=6)
    host = [torch.arange(6, dtype=torch.float32)[:, None].repeat(1, cfg.expert_params)]
    return ExpertStore(cfg, host, "cpu", slots)


def test_store_copies_lru_and_pins():
    s = _store()
    a = s.acquire(0, 1)
    assert torch.all(s.w13[a] == 1) and torch.all(s.w2[a] == 1)  # a real copy of expert 1's row
    s.release(0, 1, "pin")
    for e in (2, 3):
        s.acquire(0, e)
        s.release(0, e, "cache")
    s.acquire(0, 2)  # touch 2: expert 3 is now the least recently used
    s.release(0, 2, "cache")
    slot = s.acquire(0, 4)
    assert s.resident(0) == {1, 2, 4} and torch.all(s.w13[slot] == 4)
    assert (s.stats.hits, s.stats.misses, s.stats.experts_fetched) == (1, 4, 4)
    assert s.stats.weight_bytes_h2d == 4 * s.cfg.expert_bytes


def test_store_never_evicts_pinned_or_locked():
    s = _store()
    s.acquire(0, 0)
    s.release(0, 0, "pin")
    s.acquire(0, 1)
    s.acquire(0, 2)  # 1 and 2 locked (in use by this layer)
    with pytest.raises(SpecMoEError, match="expert slot pool exhausted: 3 slots, 1 pinned"):
        s.acquire(0, 3)
