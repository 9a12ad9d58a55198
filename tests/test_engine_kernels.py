"""The engine's dispatch to specmoe.kernels (rmsnorm, cache attention, fused MoE with slot
indirection) gives the torch path's results: on CUDA compiled, on the CPU under TRITON_INTERPRET=1
(forced with SPECMOE_ENGINE_TRITON=1 at tiny shapes)."""
import pytest
import torch

pytest.importorskip("triton")
rt = pytest.importorskip("specmoe.kernels._runtime")

from specmoe.engine import ops
from specmoe.engine.config import MoEConfig
from specmoe.engine.generate import Engine
from specmoe.engine.model import KVCache, Transformer
from specmoe.engine.moe import ResidentExperts
from specmoe.engine.weights import random_model

from specmoe.inputs.policies import make_policy

if rt.interpreting():
    DEVICE = "cpu"
elif torch.cuda.is_available():
    DEVICE = "cuda"
else:
    pytest.skip("kernels need CUDA or TRITON_INTERPRET=1", allow_module_level=True)

CFG = MoEConfig(hidden=32, layers=2, heads=4, kv_heads=2, head_dim=16, experts=4, top_k=2,
                expert_ffn=32, vocab=32, max_seq_len=16, max_batch=2, dtype="float32")


@pytest.fixture
def kernels_on(monkeypatch):
    monkeypatch.setenv("SPECMOE_ENGINE_TRITON", "1")
    ops._checked.clear()
    yield
    ops._checked.clear()


def _logits(w, toks):
    m = Transformer(CFG, w.dense, ResidentExperts(CFG, w.experts, DEVICE), DEVICE)
    cache = KVCache(CFG, 2, 16, DEVICE)
    first = m.logits(m.forward(toks[:, :5], cache, "prefill"))
    cache.lengths[:2] = torch.tensor([5, 3])  # sequence 1 rolls back two positions
    return first, m.logits(m.forward(toks[:, 5:], cache, "verify"))


def test_kernels_match_torch_in_the_model(monkeypatch, kernels_on):
    w = random_model(CFG, seed=0)
    toks = torch.randint(0, CFG.vocab, (2, 8), generator=torch.Generator().manual_seed(0))
    with_k = _logits(w, toks)
    assert {k.split("@")[0] for k in ops.active_kernels()} == {"rmsnorm", "attention", "fused_moe"}
    monkeypatch.setenv("SPECMOE_ENGINE_TRITON", "0")
    without = _logits(w, toks)
    for a, b in zip(with_k, without):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a - b).abs().max()


def test_engine_with_kernels_emits_the_torch_tokens(monkeypatch, kernels_on):
    w = random_model(CFG, seed=1)
    prompts = [[1, 2, 3], [4, 5]]
    pol = make_policy("specmoe", gamma=2, draft_experts=2)
    with_k = Engine(w, pol, device=DEVICE).generate(prompts, 4).tokens
    assert len(ops.active_kernels()) == 3
    monkeypatch.setenv("SPECMOE_ENGINE_TRITON", "0")
    assert Engine(w, pol, device=DEVICE).generate(prompts, 4).tokens == with_k


def test_a_kernel_that_falls_back_fails_the_run(monkeypatch, kernels_on):
    """A kernel error must not leave a run timing torch loops under a header that claims kernels:
    after the run the engine requires rmsnorm, attention and fused_moe on Triton."""
    import specmoe.kernels.fused_moe as fm
    from specmoe.engine.tracer import Tracer

    from specmoe.errors import SpecMoEError

    w = random_model(CFG, seed=2)
    tracer = Tracer(DEVICE)
    eng = Engine(w, make_policy("ondemand"), device=DEVICE, tracer=tracer)
    eng.generate([[1, 2, 3]], 2)
    assert {k.split("@")[0] for k in tracer.header["engine"]["kernels"]} == set(ops.KERNELS)
    ops._checked.clear()

    def broken(*a, **k):
        raise RuntimeError("out of resources")
    monkeypatch.setattr(fm, "fused_moe", broken)
    with pytest.warns(UserWarning, match="fused_moe"), pytest.raises(
            SpecMoEError, match=r"\['fused_moe'\].*out of resources"):
        eng.generate([[1, 2, 3]], 2)
    monkeypatch.setenv("SPECMOE_ENGINE_TRITON", "0")  # torch on purpose: no complaint
    eng.generate([[1, 2, 3]], 2)
