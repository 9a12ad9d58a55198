"""Lossless: every policy emits the target's greedy tokens; speculative sampling keeps p exactly.

Models run in float64 so that "equal" means equal: batched verification and one-token decode
differ only by rounding far below any gap between the two best logits.
"""
import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from specmoe.engine.config import MoEConfig
from specmoe.engine.generate import Engine
from specmoe.engine.model import KVCache, Transformer
from specmoe.engine.moe import ResidentExperts
from specmoe.engine.speculative import accept_sampling
from specmoe.engine.weights import Weights, random_model

from specmoe.errors import SpecMoEError
from specmoe.inputs.policies import Policy, make_policy

CFG = MoEConfig(hidden=32, layers=3, heads=4, kv_heads=2, head_dim=8, experts=8, top_k=2,
                expert_ffn=32, vocab=64, max_seq_len=48, max_batch=4, dtype="float64")
PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], [10, 11, 12, 13, 40, 41]]
NEW = 14


@pytest.fixture(scope="module")
def weights():
    return random_model(CFG, seed=0)


@pytest.fixture(scope="module")
def reference(weights, greedy_reference):
    return greedy_reference(CFG, weights, PROMPTS, NEW)


def _first_layers(w: Weights, n: int) -> Weights:
    """A smaller draft model: the target's first n layers, its embedding and head."""
    keep = {k: v for k, v in w.dense.items()
            if not k.startswith("layers.") or int(k.split(".")[1]) < n}
    return Weights(w.cfg.with_(layers=n), keep, w.experts[:n])


POLICIES = [
    ("ondemand", {}),
    ("overlap", {}),
    ("caching", {"resident_experts": 2}),
    ("caching", {"resident_experts": 1, "lru_slots": 4}),
    ("caching", {}),
    ("cpu", {}),
    ("specmoe", {"gamma": 1, "draft_experts": 1}),
    ("specmoe", {"gamma": 3, "draft_experts": 2}),
    ("specmoe", {"gamma": 5, "draft_experts": 4, "draft_set": "random"}),
    ("specmoe", {"gamma": 2, "draft_experts": 3, "draft_set": "hot"}),
    ("specmoe", {"gamma": 4, "draft_experts": 2, "substitution": False}),
    ("specmoe", {"gamma": 3, "draft_experts": 2, "spec_min_batch": 4}),  # batch 3: speculation off
]


@pytest.mark.parametrize("name,params", POLICIES, ids=[f"{n}-{p}" for n, p in POLICIES])
def test_greedy_equals_reference(weights, reference, name, params):
    eng = Engine(weights, make_policy(name, **params))
    res = eng.generate(PROMPTS, NEW)
    assert res.tokens == reference
    st = res.stats
    if name == "specmoe":
        spec = params.get("spec_min_batch", 1) <= len(PROMPTS)
        assert st.speculative == spec and (st.verifications > 0) == spec
        assert all(0 <= c <= st.sequence_rounds for c in st.accept_counts)


def test_specmoe_exercises_accept_and_reject(weights, reference):
    res = Engine(weights, make_policy("specmoe", gamma=3, draft_experts=2)).generate(PROMPTS, NEW)
    st = res.stats
    assert res.tokens == reference
    assert 0 < st.accept_counts[0] < st.sequence_rounds  # some drafts accepted, some rejected
    assert st.accept_counts == sorted(st.accept_counts, reverse=True)
    assert st.tokens_per_verify == pytest.approx(1 + sum(st.accept_counts) / st.sequence_rounds)


def test_all_experts_resident_accepts_every_draft(weights, reference):
    """N = E: the draft is the target, so every draft is accepted (tau = gamma + 1)."""
    res = Engine(weights, make_policy("specmoe", gamma=3, draft_experts=CFG.experts)).generate(
        PROMPTS, NEW
    )
    assert res.tokens == reference
    assert res.stats.accepted_per_verify == 3.0 and res.stats.policy_counters["substituted"] == 0


@pytest.mark.parametrize("layers", [1, 3])
def test_separate_draft_model(weights, reference, layers):
    draft = _first_layers(weights, layers)
    res = Engine(weights, make_policy("eagle", gamma=3), draft=draft).generate(PROMPTS, NEW)
    assert res.tokens == reference
    if layers == 3:  # the draft is the target itself
        assert res.stats.accepted_per_verify == 3.0
    else:
        assert res.stats.verifications > 0 and res.stats.accepted_per_verify < 3.0


def test_synthetic_acceptance_is_seeded_and_labelled(weights):
    eng = Engine(weights, make_policy("specmoe", gamma=4, draft_experts=2))
    a = eng.generate(PROMPTS, NEW, synthetic_acceptance=0.5, seed=3).stats
    b = eng.generate(PROMPTS, NEW, synthetic_acceptance=0.5, seed=3).stats
    assert a.accept_counts == b.accept_counts and a.synthetic_acceptance == 0.5
    one = eng.generate(PROMPTS, NEW, synthetic_acceptance=1.0).stats
    assert one.accepted_per_verify == 4.0


# ----------------------------------------------------------------------------- sampling


def test_accept_sampling_keeps_target_distribution():
    """Unit test over a 5-token vocabulary: first and second emitted tokens follow p, not q."""
    B, g = 40000, 2
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([0.05, 0.40, 0.25, 0.20, 0.10], dtype=torch.float64)
    q = torch.tensor([0.30, 0.10, 0.30, 0.05, 0.25], dtype=torch.float64)
    drafts = torch.multinomial(q.expand(B, 5), g, replacement=True, generator=gen)
    n, nxt = accept_sampling(drafts, q.expand(B, g, 5), p.expand(B, g + 1, 5), gen)
    first = torch.where(n >= 1, drafts[:, 0], nxt).numpy()
    assert chisquare(np.bincount(first, minlength=5), p.numpy() * B).pvalue > 1e-3
    sec = n >= 1
    second = torch.where(n[sec] >= 2, drafts[sec, 1], nxt[sec]).numpy()
    assert chisquare(np.bincount(second, minlength=5), p.numpy() * len(second)).pvalue > 1e-3
    # the test has power: the draft distribution itself is rejected
    assert chisquare(np.bincount(drafts[:, 0].numpy(), minlength=5), p.numpy() * B).pvalue < 1e-6
    # expected acceptance rate sum(min(p, q))
    assert float((n >= 1).double().mean()) == pytest.approx(
        float(torch.minimum(p, q).sum()), abs=0.01
    )


def test_speculative_sampling_end_to_end_matches_target():
    """Engine, temperature 1, tiny vocabulary: the joint law of the first two tokens equals the
    target's p(t1) p(t2 | t1); the same run accepting every draft (the draft's law) is rejected."""
    V, B = 6, 3000
    cfg = CFG.with_(vocab=V, layers=2, max_seq_len=16, max_batch=B)
    w = random_model(cfg, seed=0)
    prompt = [1, 4, 2, 5]
    m = Transformer(cfg, w.dense, ResidentExperts(cfg, w.experts, "cpu"))
    lg = m.logits(
        m.forward(torch.tensor([prompt + [t] for t in range(V)]), KVCache(cfg, V, 16, "cpu"))
    )
    joint = (torch.softmax(lg[0, -2], -1)[:, None] * torch.softmax(lg[:, -1], -1)).flatten().numpy()
    eng = Engine(w, make_policy("specmoe", gamma=2, draft_experts=1), max_batch=B, max_seq_len=16)

    def observed(alpha):
        res = eng.generate([prompt] * B, 3, temperature=1.0, seed=1, synthetic_acceptance=alpha)
        t = np.array(res.tokens)
        return np.bincount(t[:, 0] * V + t[:, 1], minlength=V * V), res.stats

    obs, st = observed(None)
    assert 0.2 < st.accepted_per_verify < 1.9  # drafts both accepted and rejected
    assert chisquare(obs, joint * B).pvalue > 1e-3
    obs_draft, _ = observed(1.0)
    assert chisquare(obs_draft, joint * B).pvalue < 1e-6


# ----------------------------------------------------------------------------- bad input


def test_bad_policy_and_batch_inputs(weights):
    with pytest.raises(SpecMoEError, match="draft_experts=9: the model has only 8"):
        Engine(weights, make_policy("specmoe", gamma=2, draft_experts=9))
    with pytest.raises(SpecMoEError, match="gamma=-1"):
        Engine(weights, Policy(name="specmoe", gamma=-1, draft_experts=2))
    with pytest.raises(SpecMoEError, match="gamma=-1"):
        make_policy("specmoe", gamma=-1, draft_experts=2)
    eng = Engine(weights, make_policy("ondemand"), max_batch=2)
    with pytest.raises(SpecMoEError, match="batch=3 is larger than the KV cache"):
        eng.generate(PROMPTS, 4)
    with pytest.raises(SpecMoEError, match="exceeds the KV cache"):
        eng.generate(PROMPTS[:1], CFG.max_seq_len)
    with pytest.raises(SpecMoEError, match="outside 0..63"):
        eng.generate([[1, 64]], 2)
    with pytest.raises(SpecMoEError, match="not implemented in the engine"):
        Engine(weights, make_policy("fate"))
    with pytest.raises(SpecMoEError, match="needs a separate draft model"):
        Engine(weights, make_policy("eagle", gamma=2))
    with pytest.raises(SpecMoEError, match="expert_slots=3"):
        Engine(weights, make_policy("ondemand"), expert_slots=3)
