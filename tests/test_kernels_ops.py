"""Gating, RMSNorm, RoPE and cache attention against their torch references (interpreter on CPU)."""

# TRITON_INTERPRET comes from the environment (CI's .ci/run and `make test` set it): a GPU run
# of these files then tests the compiled kernels, not the interpreter.


import pytest
import torch
from specmoe.kernels import _runtime as rt
from specmoe.kernels.attention import attention, attention_reference
from specmoe.kernels.gating import topk_gating, topk_gating_reference
from specmoe.kernels.rmsnorm import rmsnorm, rmsnorm_reference
from specmoe.kernels.rope import rope, rope_reference

from specmoe.errors import SpecMoEError

if not rt.interpreting() and not torch.cuda.is_available():
    pytest.skip("specmoe.kernels was imported without TRITON_INTERPRET=1 and there is no GPU",
                allow_module_level=True)
DEV = "cpu" if rt.interpreting() else "cuda"
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])


def tol(dtype):
    if dtype == torch.float32:
        return {"rtol": 1e-5, "atol": 1e-5}
    # interpreter: fp32 math, RNE-rounded stores, so at most 1 bf16 ulp from the reference
    return {"rtol": 8e-3, "atol": 8e-3} if rt.interpreting() else {"rtol": 2e-2, "atol": 2e-2}


@pytest.fixture
def no_launch(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("a kernel was launched before the input was rejected")
    monkeypatch.setattr(rt, "launch", fail)


# ----------------------------------------------------------------------------- gating


def distinct_logits(T, E, dtype, seed=0):
    """Rows of distinct values exactly representable in bf16, so top-k has no ties."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(E, generator=g) for _ in range(T)]
    return ((torch.stack(rows).float() - E / 2) * (4.0 / E)).to(DEV, dtype)


@pytest.mark.parametrize("T,E,k", [(1, 8, 2), (13, 60, 6), (5, 128, 8), (4, 8, 1), (3, 5, 5)])
@pytest.mark.parametrize("mode", ["mixtral", "qwen2", "deepseek-v3"])
@DTYPES
def test_gating_matches_reference(T, E, k, mode, dtype):
    kw = {"mixtral": {}, "qwen2": {"renormalize": False},
          "deepseek-v3": {"scoring": "sigmoid", "routed_scaling_factor": 2.5,
                              "correction_bias": torch.linspace(-0.01, 0.01, E, device=DEV)}}[mode]
    logits = distinct_logits(T, E, dtype, seed=T * E)
    w, ids = topk_gating(logits, k, **kw)
    wr, ir = topk_gating_reference(logits, k, **kw)
    assert w.dtype == torch.float32 and ids.dtype == torch.int32 and w.shape == (T, k)
    assert torch.equal(ids, ir)
    torch.testing.assert_close(w, wr, rtol=1e-6, atol=1e-6)
    if mode == "mixtral":
        torch.testing.assert_close(w.sum(1), torch.ones(T, device=DEV))


def test_gating_strided_rows_and_bias_changes_choice():
    logits = distinct_logits(6, 16, torch.float32)
    wide = torch.zeros(6, 32, device=DEV)
    wide[:, :16] = logits
    w, ids = topk_gating(wide[:, :16], 2)  # rows with stride 32
    assert torch.equal(ids, topk_gating_reference(logits, 2)[1])
    bias = torch.zeros(16, device=DEV)
    bias[0] = 10.0  # forces expert 0 in; its weight stays sigmoid(logit) without the bias
    w, ids = topk_gating(logits, 2, scoring="sigmoid", renormalize=False, correction_bias=bias)
    assert (ids[:, 0] == 0).all()
    torch.testing.assert_close(w[:, 0], torch.sigmoid(logits[:, 0]))


def test_gating_rejects_bad_input(no_launch):
    x = torch.randn(4, 8, device=DEV)
    for msg, call in {
        "top_k: got 9": lambda: topk_gating(x, 9),
        "top_k: got 0": lambda: topk_gating(x, 0),
        "scoring": lambda: topk_gating(x, 2, scoring="relu"),
        "logits.shape": lambda: topk_gating(x[None], 2),
        "logits.dtype": lambda: topk_gating(x.long(), 2),
        "correction_bias.shape": lambda: topk_gating(x, 2, correction_bias=torch.zeros(7)),
        "routed_scaling_factor": lambda: topk_gating(x, 2, routed_scaling_factor=0),
        "logits: got strides": lambda: topk_gating(x.t(), 2),
    }.items():
        with pytest.raises(SpecMoEError, match=msg):
            call()


# ----------------------------------------------------------------------------- RMSNorm


@pytest.mark.parametrize("shape", [(5, 40), (2, 3, 64), (1, 7)])
@pytest.mark.parametrize("with_residual", [False, True])
@DTYPES
def test_rmsnorm_matches_reference(shape, with_residual, dtype):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=g) * 3).to(DEV, dtype)
    w = (1 + torch.randn(shape[-1], generator=g) * 0.1).to(DEV, dtype)
    r = torch.randn(shape, generator=g).to(DEV, dtype) if with_residual else None
    y, h = rmsnorm(x, w, 1e-5, r)
    yr, hr = rmsnorm_reference(x, w, 1e-5, r)
    torch.testing.assert_close(y, yr, **tol(dtype))
    if with_residual:
        torch.testing.assert_close(h, hr, rtol=0, atol=0)  # one rounded add, exactly
    else:
        assert h is x


def test_rmsnorm_rejects_bad_input(no_launch):
    x = torch.randn(4, 8, device=DEV)
    w = torch.ones(8, device=DEV)
    for msg, call in {
        "weight.shape": lambda: rmsnorm(x, torch.ones(7, device=DEV)),
        "residual.dtype": lambda: rmsnorm(x, w, residual=x.half()),
        "residual.shape": lambda: rmsnorm(x, w, residual=x[:2]),
        "eps": lambda: rmsnorm(x, w, eps=0.0),
        "x: got a non-contiguous": lambda: rmsnorm(torch.randn(8, 4, device=DEV).t(), w),
    }.items():
        with pytest.raises(SpecMoEError, match=msg):
            call()


# ----------------------------------------------------------------------------- RoPE


@pytest.mark.parametrize("H,Hkv,Dh,theta", [(6, 2, 48, 1e6), (4, 4, 8, 10000.0), (3, 1, 32, 500.0)])
@DTYPES
def test_rope_matches_reference(H, Hkv, Dh, theta, dtype):
    T = 7
    qkv = torch.randn(T, H + 2 * Hkv, Dh).to(DEV, dtype)
    q, k = qkv[:, :H], qkv[:, H:H + Hkv]  # strided views, as sliced from a fused projection
    pos = torch.tensor([0, 1, 5, 100, 4095, 3, 9], device=DEV)
    qo, ko = rope(q, k, pos, theta)
    qr, kr = rope_reference(q, k, pos, theta)
    torch.testing.assert_close(qo, qr, **tol(dtype))
    torch.testing.assert_close(ko, kr, **tol(dtype))
    torch.testing.assert_close(qo[0], q[0])  # position 0 is the identity


def test_rope_rejects_bad_input(no_launch):
    q, k = torch.randn(3, 4, 8, device=DEV), torch.randn(3, 2, 8, device=DEV)
    pos = torch.arange(3, device=DEV)
    for msg, call in {
        "head_dim": lambda: rope(q[..., :7], k[..., :7], pos),
        "k.dtype": lambda: rope(q, k.half(), pos),
        "k.shape": lambda: rope(q, k[:2], pos),
        "positions.dtype": lambda: rope(q, k, pos.float()),
        "positions.shape": lambda: rope(q, k, pos[:2]),
        "q: got strides": lambda: rope(q.transpose(1, 2).contiguous().transpose(1, 2), k, pos),
        "theta": lambda: rope(q, k, pos, theta=-1.0),
    }.items():
        with pytest.raises(SpecMoEError, match=msg):
            call()


# ----------------------------------------------------------------------------- attention


def make_attn(B, Q, H, Hkv, Dh, S, lens, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Q, H, Dh, generator=g).to(DEV, dtype)
    kc = torch.randn(B, S, Hkv, Dh, generator=g).to(DEV, dtype)
    vc = torch.randn(B, S, Hkv, Dh, generator=g).to(DEV, dtype)
    lens = torch.tensor(lens, dtype=torch.int32, device=DEV)
    for b in range(B):  # never-written cache positions hold garbage: they must be ignored
        kc[b, int(lens[b]) + Q:] = float("nan")
        vc[b, int(lens[b]) + Q:] = float("nan")
    return q, kc, vc, lens


@pytest.mark.parametrize("B,Q,H,Hkv,Dh,S,lens", [
    (3, 1, 4, 4, 16, 40, [0, 17, 39]),       # decode, MHA, a sequence with an empty cache
    (3, 4, 6, 2, 24, 48, [0, 17, 44]),       # verification, GQA 3, non-pow2 head_dim
    (2, 5, 8, 1, 16, 70, [64, 3]),           # verification, MQA, crosses key blocks
])
@pytest.mark.parametrize("splits", [1, 3])
@DTYPES
def test_attention_matches_reference(B, Q, H, Hkv, Dh, S, lens, splits, dtype):
    q, kc, vc, lens = make_attn(B, Q, H, Hkv, Dh, S, lens, dtype)
    out = attention(q, kc, vc, lens, num_splits=splits)
    assert out.shape == q.shape and out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out, attention_reference(q, kc, vc, lens), **tol(dtype))


def test_verification_equals_successive_decodes():
    """Query i of a verification step sees exactly what a decode at that position would see."""
    B, Q, H, Hkv, Dh, S = 2, 3, 4, 2, 16, 32
    q, kc, vc, lens = make_attn(B, Q, H, Hkv, Dh, S, [5, 20], torch.float32, seed=4)
    verify = attention(q, kc, vc, lens)
    for i in range(Q):
        step = attention(q[:, i:i + 1].contiguous(), kc, vc, lens + i)
        torch.testing.assert_close(verify[:, i:i + 1], step, rtol=1e-5, atol=1e-5)


def test_attention_rejects_bad_input(no_launch):
    q, kc, vc, lens = make_attn(2, 2, 4, 2, 16, 10, [1, 3], torch.float32)
    for msg, call in {
        "Hkv": lambda: attention(q[:, :, :3].contiguous(), kc, vc, lens),
        "cache_lens: got values": lambda: attention(q, kc, vc, lens + 7),
        "cache_lens: got values in -1": lambda: attention(q, kc, vc, lens - 2),
        "k_cache.shape": lambda: attention(q, kc[:, :, :, :8], vc, lens),
        "v_cache.shape": lambda: attention(q, kc, vc[:1], lens),
        "cache_lens.dtype": lambda: attention(q, kc, vc, lens.float()),
        "v_cache.dtype": lambda: attention(q, kc, vc.half(), lens),
        "num_splits": lambda: attention(q, kc, vc, lens, num_splits=0),
    }.items():
        with pytest.raises(SpecMoEError, match=msg):
            call()
