"""CUDA paths: pinned host buffers, the copy stream and its events, CUDA-event tracing, and the
same tokens as the CPU. Skipped without a GPU."""
import pytest
import torch
from specmoe.engine.config import MoEConfig
from specmoe.engine.generate import Engine
from specmoe.engine.microbench import CUDA_KINDS, run_microbench
from specmoe.engine.tracer import Tracer
from specmoe.engine.weights import random_model

from specmoe.inputs.policies import make_policy
from specmoe.measure.trace import read_trace

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

CFG = MoEConfig(hidden=64, layers=3, heads=4, kv_heads=2, head_dim=16, experts=8, top_k=2,
                expert_ffn=64, vocab=96, max_seq_len=48, max_batch=4, dtype="float64")
PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], [10, 11, 12, 13, 40, 41], [3, 3, 3, 3]]
POLICIES = [("ondemand", {}), ("overlap", {}), ("caching", {"resident_experts": 2}),
            ("cpu", {"resident_experts": 2}), ("specmoe", {"gamma": 3, "draft_experts": 2}),
            ("specmoe", {"gamma": 4, "draft_experts": 1, "draft_set": "random"})]


@pytest.fixture(scope="module")
def weights():
    return random_model(CFG, seed=0)


@pytest.fixture(scope="module")
def cpu_tokens(weights):
    return Engine(weights, make_policy("ondemand")).generate(PROMPTS, 12).tokens


@pytest.mark.parametrize("name,params", POLICIES, ids=[f"{n}-{p}" for n, p in POLICIES])
def test_cuda_tokens_and_bytes_match_the_cpu(weights, cpu_tokens, name, params):
    """float64: every policy on the GPU emits the CPU's greedy tokens and moves the same bytes."""
    gpu = Engine(weights, make_policy(name, **params), device="cuda")
    assert all(b.is_pinned() for b in gpu.store.host)
    res = gpu.generate(PROMPTS, 12)
    assert res.tokens == cpu_tokens
    cpu = Engine(weights, make_policy(name, **params)).generate(PROMPTS, 12)
    assert res.stats.bytes_by_link == cpu.stats.bytes_by_link
    assert res.stats.experts_fetched == cpu.stats.experts_fetched


def test_cuda_trace_times_copies_on_the_copy_stream(tmp_path):
    cfg = CFG.with_(dtype="bfloat16", hidden=256, expert_ffn=512, experts=16, max_batch=8)
    tracer = Tracer("cuda")
    eng = Engine(random_model(cfg, seed=1, pin=True),
                 make_policy("specmoe", gamma=3, draft_experts=4), device="cuda", tracer=tracer)
    res = eng.generate([[1, 2, 3, 4]] * 8, 8, synthetic_acceptance=0.6)
    t = read_trace(tracer.write(tmp_path / "cuda.jsonl.gz"))
    assert t.header["device"]["type"] == "cuda" and t.header["device"]["name"]
    h2d = t.by_cat("h2d")
    assert h2d and all(e["stream"] == "copy" and e["dur_us"] > 0 for e in h2d)
    assert sum(e["bytes"] for e in h2d) == res.stats.weight_bytes_h2d
    assert all(e["dur_us"] >= 0 for e in t.events)
    assert res.stats.tokens_per_s > 0


def test_cuda_separate_draft_model(weights, cpu_tokens):
    res = Engine(weights, make_policy("eagle", gamma=3), draft=weights, device="cuda").generate(
        PROMPTS, 12
    )
    assert res.tokens == cpu_tokens and res.stats.accepted_per_verify == 3.0


def test_cuda_sampling_runs_with_device_generators(weights):
    eng = Engine(weights, make_policy("specmoe", gamma=3, draft_experts=2), device="cuda")
    a = eng.generate(PROMPTS, 10, temperature=0.8, seed=5).tokens
    b = eng.generate(PROMPTS, 10, temperature=0.8, seed=5).tokens
    assert a == b and all(len(t) == 10 for t in a)


def test_cuda_microbench(tmp_path):
    t = read_trace(run_microbench(tmp_path / "mb.jsonl", device="cuda", quick=True))
    copies = [e for e in t.events if e["cat"] in ("h2d", "d2h")]
    assert {e["pinned"] for e in copies} == {True, False}
    assert {e["cat"] for e in t.events} == set(CUDA_KINDS)
    assert all(e["launches"] >= 1 and e["rotation"] >= 1 for e in t.events if e["cat"] != "h2d")


def test_cuda_draft_layers_and_attention_never_sync():
    """With CUDA's sync debug mode at 'error', SpecMoE's draft layers and every attention block
    run (a host sync there raises); the kernels are active after the run."""
    cfg = CFG.with_(dtype="bfloat16", hidden=256, expert_ffn=512, experts=16, max_batch=8)
    tracer = Tracer("cuda")
    eng = Engine(random_model(cfg, seed=1, pin=True),
                 make_policy("specmoe", gamma=3, draft_experts=4), device="cuda", tracer=tracer)
    prompts = [[1, 2, 3, 4]] * 8
    eng.generate(prompts, 6, synthetic_acceptance=0.6)  # warm-up: compiles and probes
    hot = []

    def strict(obj, method, is_hot):
        orig = getattr(obj, method)

        def run(*a, **k):
            if not is_hot(a):
                return orig(*a, **k)
            hot.append(method)
            torch.cuda.set_sync_debug_mode("error")
            try:
                return orig(*a, **k)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        setattr(obj, method, run)
    strict(eng.provider, "moe", lambda a: a[4] == "draft")
    strict(eng.model, "_attention", lambda a: True)
    eng.generate(prompts, 10, synthetic_acceptance=0.6)
    assert hot.count("moe") > 0 and hot.count("_attention") > 0
    assert {k.split("@")[0] for k in tracer.header["engine"]["kernels"]} == {
        "rmsnorm", "attention", "fused_moe"}


def test_cuda_graph_draft_gives_the_eager_tokens():
    """A captured self-draft step drafts what the eager one does (fp32: no near-tie flips from
    the attention's different split counts), counts the same, and was not dropped to eager."""
    import warnings

    cfg = CFG.with_(dtype="float32", hidden=128, expert_ffn=256, experts=16, max_batch=8)
    w = random_model(cfg, seed=2, pin=True)
    pol = make_policy("specmoe", gamma=3, draft_experts=4)
    prompts = [[1, 2, 3, 4], [5, 6], [7, 8, 9], [10]] * 2
    eager = Engine(w, pol, device="cuda", cuda_graphs=False).generate(prompts, 12)
    eng = Engine(w, pol, device="cuda", cuda_graphs=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a capture that falls back warns
        res = eng.generate(prompts, 12)
    assert eng.graphs.graphs[8] is not None
    assert res.tokens == eager.tokens
    assert res.stats.policy_counters == eager.stats.policy_counters
