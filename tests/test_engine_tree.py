"""Tree drafts in the engine (RSD): greedy output equals non-speculative greedy output token for
token; recursive rejection sampling keeps the target's law (float64, tiny random models)."""
import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from specmoe.engine.config import MoEConfig
from specmoe.engine.generate import Engine
from specmoe.engine.model import KVCache, Transformer
from specmoe.engine.moe import ResidentExperts
from specmoe.engine.tree import accept_tree, build_tree
from specmoe.engine.weights import random_model

from specmoe.errors import SpecMoEError
from specmoe.inputs.policies import make_policy

CFG = MoEConfig(hidden=32, layers=3, heads=4, kv_heads=2, head_dim=8, experts=8, top_k=2,
                expert_ffn=32, vocab=64, max_seq_len=64, max_batch=4, dtype="float64")
PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], [10, 11, 12, 13, 40, 41]]
NEW = 14


@pytest.fixture(scope="module")
def weights():
    return random_model(CFG, seed=0)


@pytest.fixture(scope="module")
def reference(weights, greedy_reference):
    return greedy_reference(CFG, weights, PROMPTS, NEW)


def test_tree_shape_by_hand():
    t = build_tree(2, 2)
    assert t.parent == (-1, 0, 0, 1, 1, 2, 2) and t.levels == ((0,), (1, 2), (3, 4, 5, 6))
    assert t.ancestors[5].nonzero().flatten().tolist() == [0, 2, 5]
    chains = build_tree(3, 2, levels=1)
    assert chains.parent == (-1, 0, 0, 1, 2, 3, 4) and chains.children[3] == (5,)


TREES = [
    {"gamma": 2, "draft_experts": 1, "tree_width": 2},
    {"gamma": 3, "draft_experts": 2, "tree_width": 2},
    {"gamma": 3, "draft_experts": 1, "tree_width": 3, "tree_levels": 1},
    {"gamma": 4, "draft_experts": 2, "tree_width": 2, "tree_levels": 2, "draft_set": "random"},
]


@pytest.mark.parametrize("params", TREES, ids=lambda p: "-".join(map(str, p.values())))
def test_greedy_tree_equals_reference(weights, reference, params):
    res = Engine(weights, make_policy("specmoe", **params)).generate(PROMPTS, NEW)
    assert res.tokens == reference
    assert res.stats.verifications > 0


def test_tree_accepts_more_than_the_chain(weights, reference):
    chain = Engine(weights, make_policy("specmoe", gamma=3, draft_experts=1)).generate(PROMPTS, NEW)
    tree = Engine(weights, make_policy("specmoe", gamma=3, draft_experts=1, tree_width=3)).generate(
        PROMPTS, NEW
    )
    assert tree.tokens == chain.tokens == reference
    assert 0 < chain.stats.accepted_per_verify < tree.stats.accepted_per_verify


def test_all_experts_resident_accepts_the_whole_depth(weights, reference):
    res = Engine(weights, make_policy("specmoe", gamma=3, draft_experts=8, tree_width=2)).generate(
        PROMPTS, NEW
    )
    assert res.tokens == reference and res.stats.accepted_per_verify == 3.0


def test_recursive_rejection_keeps_the_target_distribution():
    """One root with 3 children drawn without replacement from q: the emitted token follows p."""
    B, V = 20000, 5
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([0.05, 0.40, 0.25, 0.20, 0.10], dtype=torch.float64)
    q = torch.tensor([0.30, 0.10, 0.30, 0.05, 0.25], dtype=torch.float64)
    tree = build_tree(1, 3)
    keys = q.log() - torch.log(-torch.log(torch.rand(B, V, generator=gen, dtype=torch.float64)))
    toks = torch.zeros(B, tree.size, dtype=torch.long)
    toks[:, 1:] = keys.topk(3, dim=-1).indices            # Gumbel-top-3: without replacement
    logits = p.log().expand(B, tree.size, V).clone()
    paths, nxt = accept_tree(tree, toks, logits, {0: q.expand(B, V)}, 1.0, gen)
    first = np.array([int(toks[b, pth[0]]) if pth else nxt[b] for b, pth in enumerate(paths)])
    assert chisquare(np.bincount(first, minlength=V), p.numpy() * B).pvalue > 1e-3
    # power: the first draft alone follows q, far from p
    assert chisquare(np.bincount(toks[:, 1].numpy(), minlength=V), p.numpy() * B).pvalue < 1e-6
    # three candidates accept more often than one (sum min(p, q) = 0.55)
    assert np.mean([bool(pth) for pth in paths]) > float(torch.minimum(p, q).sum()) + 0.1


def test_tree_sampling_end_to_end_matches_target():
    """Engine, temperature 1, vocabulary 6:
    the joint law of the first two tokens is the target's."""
    V, B = 6, 2000
    cfg = CFG.with_(vocab=V, layers=2, max_seq_len=24, max_batch=B)
    w = random_model(cfg, seed=0)
    prompt = [1, 4, 2, 5]
    m = Transformer(cfg, w.dense, ResidentExperts(cfg, w.experts, "cpu"))
    lg = m.logits(
        m.forward(torch.tensor([prompt + [t] for t in range(V)]), KVCache(cfg, V, 24, "cpu"))
    )
    joint = (torch.softmax(lg[0, -2], -1)[:, None] * torch.softmax(lg[:, -1], -1)).flatten().numpy()
    eng = Engine(
        w,
        make_policy("specmoe", gamma=2, draft_experts=1, tree_width=2),
        max_batch=B,
        max_seq_len=24,
    )
    res = eng.generate([prompt] * B, 3, temperature=1.0, seed=1)
    t = np.array(res.tokens)
    assert 0.2 < res.stats.accepted_per_verify < 1.95
    assert chisquare(np.bincount(t[:, 0] * V + t[:, 1], minlength=V * V), joint * B).pvalue > 1e-3


def test_tree_refuses_synthetic_acceptance(weights):
    eng = Engine(weights, make_policy("specmoe", gamma=2, draft_experts=1, tree_width=2))
    with pytest.raises(SpecMoEError, match="tree_width"):
        eng.generate(PROMPTS, 4, synthetic_acceptance=0.5)
