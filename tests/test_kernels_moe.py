"""Fused MoE and its alignment against the torch references (Triton interpreter on the CPU)."""

# TRITON_INTERPRET comes from the environment (CI's .ci/run and `make test` set it): a GPU run
# of these files then tests the compiled kernels, not the interpreter.


import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from specmoe.kernels import _runtime as rt
from specmoe.kernels import moe_config, moe_tune
from specmoe.kernels.fused_moe import fused_moe, fused_moe_reference, nonresident_mask
from specmoe.kernels.moe_align import (
    max_padded_size,
    moe_align_block_size,
    moe_align_block_size_reference,
)

from specmoe.errors import SpecMoEError

if not rt.interpreting() and not torch.cuda.is_available():
    pytest.skip("specmoe.kernels was imported without TRITON_INTERPRET=1 and there is no GPU",
                allow_module_level=True)
DEV = "cpu" if rt.interpreting() else "cuda"
FIELDS = ("sorted_token_ids", "block_expert", "block_slot", "num_tokens_post_padded")


def routing(T, E, k, gen, experts=None):
    """[T, k] distinct experts per token, drawn from `experts` (default all)."""
    pool = torch.tensor(experts if experts is not None else range(E))
    rows = [pool[torch.randperm(len(pool), generator=gen)[:k]] for _ in range(T)]
    return (torch.stack(rows) if rows else torch.empty(0, k, dtype=torch.long)).to(
        DEV, torch.int32)


def make_moe(T, D, Fi, E, k, dtype, slots=None, seed=0, experts=None):
    g = torch.Generator().manual_seed(seed)
    S = E if slots is None else max(int(max(slots)) + 1, 1)
    x = torch.randn(T, D, generator=g).to(DEV, dtype)
    w13 = (torch.randn(S, 2 * Fi, D, generator=g) * D ** -0.5).to(DEV, dtype)
    w2 = (torch.randn(S, D, Fi, generator=g) * Fi ** -0.5).to(DEV, dtype)
    ids = routing(T, E, k, g, experts)
    w = torch.rand(T, k, generator=g).to(DEV)
    slot = torch.tensor(slots if slots is not None else range(E), dtype=torch.int32, device=DEV)
    return x, w13, w2, w, ids, slot


def tol(dtype):
    # Interpreter: bf16 stores round like the GPU and the math is fp32, so only the order of
    # fp32 sums differs from the reference. On a GPU, bf16 tensor cores round more.
    if dtype == torch.float32:
        return {"rtol": 1e-4, "atol": 1e-4}
    return {"rtol": 2e-2, "atol": 2e-2} if rt.interpreting() else {"rtol": 4e-2, "atol": 4e-2}


# ----------------------------------------------------------------------------- alignment


@pytest.mark.parametrize("parallel", [None, True], ids=["auto", "parallel"])
@pytest.mark.parametrize("T,k,E,bs,drop", [(1, 2, 8, 16, ()), (24, 2, 8, 16, (1,)),
                                            (7, 3, 5, 4, (0, 4)), (40, 8, 128, 16, (5,)),
                                            (5, 1, 3, 1, ()), (0, 2, 4, 16, ()),
                                            (600, 2, 8, 16, (1,)), (300, 8, 128, 16, (5, 9))])
def test_align_matches_reference(T, k, E, bs, drop, parallel):
    """Both implementations (the one-program kernel at decode sizes, the multi-program one past
    PARALLEL_MIN_CHUNKS chunks: the last two cases take it by default) give the reference's
    output, order within each expert included."""
    g = torch.Generator().manual_seed(T + E)
    ids = routing(T, E, k, g)
    slot = torch.randperm(E, generator=g).to(torch.int32)
    slot[list(drop)] = -1
    slot = slot.to(DEV)
    a = moe_align_block_size(ids, bs, E, slot, parallel=parallel)
    r = moe_align_block_size_reference(ids, bs, E, slot)
    for f in FIELDS:
        assert torch.equal(getattr(a, f), getattr(r, f)), f
    assert a.sentinel == T * k


@settings(max_examples=25, deadline=None)
@given(T=st.integers(0, 12), E=st.integers(1, 9), data=st.data(),
       bs=st.sampled_from([1, 2, 4, 16]))
def test_align_invariants(T, E, data, bs):
    k = data.draw(st.integers(1, E))
    ids = torch.tensor(data.draw(st.lists(st.permutations(range(E)), min_size=T, max_size=T)),
                       dtype=torch.int32).reshape(T, E)[:, :k].contiguous()
    resident = data.draw(st.lists(st.booleans(), min_size=E, max_size=E))
    slot = torch.tensor([i if r else -1 for i, r in enumerate(resident)], dtype=torch.int32)
    a = moe_align_block_size(ids.to(DEV), bs, E, slot.to(DEV))
    sorted_ids, bexp, bslot = a.sorted_token_ids.cpu(), a.block_expert.cpu(), a.block_slot.cpu()
    ntpp = int(a.num_tokens_post_padded)
    flat = ids.reshape(-1)
    res_slots = [i for i in range(T * k) if resident[flat[i]]]
    counts = torch.bincount(flat[res_slots].long(), minlength=E) if res_slots else torch.zeros(E)
    # padding count: each resident expert's run rounded up to the block size
    assert ntpp == sum(-(-int(c) // bs) * bs for c in counts)
    assert sorted_ids.numel() == max_padded_size(T * k, E, bs) >= ntpp
    used = sorted_ids[:ntpp]
    # every resident token-slot exactly once, nothing else but the sentinel
    real = used[used != T * k]
    assert sorted(real.tolist()) == res_slots
    assert (sorted_ids[ntpp:] == T * k).all()
    assert int((used == T * k).sum()) == ntpp - len(res_slots)
    # blocks hold one expert each, in increasing order, with its slot
    nb = ntpp // bs
    for b in range(nb):
        blk = sorted_ids[b * bs:(b + 1) * bs]
        blk = blk[blk != T * k]
        assert len(blk) > 0  # no block is all padding
        assert (flat[blk.long()] == bexp[b]).all()
        assert blk.tolist() == sorted(blk.tolist())
        assert bslot[b] == slot[bexp[b]] >= 0
    assert bexp[:nb].tolist() == sorted(bexp[:nb].tolist())
    assert (bexp[nb:] == -1).all() and (bslot[nb:] == -1).all()


def test_align_rejects_bad_input():
    ids = torch.zeros(4, 2, dtype=torch.int32, device=DEV)
    slot = torch.arange(4, dtype=torch.int32, device=DEV)
    with pytest.raises(SpecMoEError, match="block_size"):
        moe_align_block_size(ids, 12, 4, slot)
    with pytest.raises(SpecMoEError, match="topk_ids"):
        moe_align_block_size(ids + 4, 16, 4, slot)
    with pytest.raises(SpecMoEError, match="top_k"):
        moe_align_block_size(torch.zeros(4, 5, dtype=torch.int32, device=DEV), 16, 4, slot)
    with pytest.raises(SpecMoEError, match="slot_of_expert.dtype"):
        moe_align_block_size(ids, 16, 4, slot.long())


# ----------------------------------------------------------------------------- fused MoE


CASES = {
    "basic+empty experts": {"T": 24, "D": 64, "Fi": 96, "E": 8, "k": 2, "experts": range(6)},
    "one token": {"T": 1, "D": 64, "Fi": 96, "E": 8, "k": 2},
    "all on one expert": {"T": 9, "D": 32, "Fi": 48, "E": 4, "k": 1, "experts": [3]},
    "top1": {"T": 10, "D": 32, "Fi": 64, "E": 4, "k": 1},
    "non-pow2": {"T": 7, "D": 40, "Fi": 50, "E": 5, "k": 3},
    "int64 ids": {"T": 6, "D": 32, "Fi": 32, "E": 4, "k": 2, "ids_dtype": torch.int64},
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_moe_matches_reference(case, dtype):
    c = CASES[case]
    x, w13, w2, w, ids, slot = make_moe(c["T"], c["D"], c["Fi"], c["E"], c["k"], dtype,
                                        experts=c.get("experts"))
    ids = ids.to(c.get("ids_dtype", torch.int32))
    out = fused_moe(x, w13, w2, w, ids, slot)
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out, fused_moe_reference(x, w13, w2, w, ids, slot), **tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_nonresident_experts_contribute_nothing(dtype):
    T, D, Fi, E, k = 12, 32, 48, 6, 2
    # Experts live in a 4-slot cache in scrambled slots; experts 1 and 4 are not resident.
    cache = [2, -1, 0, 3, -1, 1]
    x, w13c, w2c, w, ids, slot = make_moe(T, D, Fi, E, k, dtype, slots=cache)
    full13 = torch.randn(E, 2 * Fi, D).to(DEV, dtype) * D ** -0.5
    full2 = torch.randn(E, D, Fi).to(DEV, dtype) * Fi ** -0.5
    for e, s in enumerate(cache):  # the full table agrees with the cache on resident experts
        if s >= 0:
            full13[e], full2[e] = w13c[s], w2c[s]
    ident = torch.arange(E, dtype=torch.int32, device=DEV)
    missing_only = torch.tensor([e if s < 0 else -1 for e, s in enumerate(cache)],
                                dtype=torch.int32, device=DEV)
    part = fused_moe(x, w13c, w2c, w, ids, slot)
    rest = fused_moe(x, full13, full2, w, ids, missing_only)
    whole = fused_moe(x, full13, full2, w, ids, ident)
    torch.testing.assert_close(part.float() + rest.float(), whole.float(), **tol(dtype))
    torch.testing.assert_close(part, fused_moe_reference(x, w13c, w2c, w, ids, slot), **tol(dtype))
    mask = nonresident_mask(ids, slot)
    assert mask.any() and torch.equal(mask, (ids == 1) | (ids == 4))
    # a token routed only to missing experts gets exactly zero
    only_missing = mask.all(dim=1)
    if only_missing.any():
        assert (part[only_missing] == 0).all()


def test_fused_moe_empty_and_explicit_config():
    x, w13, w2, w, ids, slot = make_moe(0, 32, 48, 4, 2, torch.float32)
    assert fused_moe(x, w13, w2, w, ids, slot).shape == (0, 32)
    x, w13, w2, w, ids, slot = make_moe(20, 32, 80, 4, 2, torch.float32, seed=3)
    # grouped tile order, several K steps
    cfg = {
        "BLOCK_SIZE_M": 16,
        "BLOCK_SIZE_N": 16,
        "BLOCK_SIZE_K": 16,
        "GROUP_SIZE_M": 2,
        "num_warps": 4,
        "num_stages": 2,
    }
    torch.testing.assert_close(
        fused_moe(x, w13, w2, w, ids, slot, config=cfg),
        fused_moe_reference(x, w13, w2, w, ids, slot),
        **tol(x.dtype),
    )


@pytest.fixture
def no_launch(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("a kernel was launched before the input was rejected")
    monkeypatch.setattr(rt, "launch", fail)


def test_fused_moe_rejects_bad_input(no_launch):
    x, w13, w2, w, ids, slot = make_moe(4, 32, 48, 4, 2, torch.float32)
    bad = {
        "x.dtype": {"x": x.to(torch.int32)},
        "w13.shape": {"w13": w13[:, :, :16]},
        "w2.shape": {"w2": w2[:, :, :16]},
        "w13.dtype": {"w13": w13.half()},
        r"top_k \(topk_ids": {"ids": torch.zeros(4, 5, dtype=torch.int32, device=DEV),
                                  "w": torch.zeros(4, 5, device=DEV)},
        "x: got a non-contiguous": {"x": torch.randn(32, 4, device=DEV).t()},
        "slot_of_expert: got values": {"slot": torch.tensor([0, 1, 2, 4], dtype=torch.int32,
                                                             device=DEV)},
        "slot_of_expert.dtype": {"slot": slot.long()},
        "topk_weights.shape": {"w": w[:, :1]},
    }
    args = {"x": x, "w13": w13, "w2": w2, "w": w, "ids": ids, "slot": slot}
    for msg, change in bad.items():
        a = {**args, **change}
        with pytest.raises(SpecMoEError, match=msg):
            fused_moe(a["x"], a["w13"], a["w2"], a["w"], a["ids"], a["slot"])
    with pytest.raises(SpecMoEError, match="BLOCK_SIZE_M"):
        fused_moe(x, w13, w2, w, ids, slot, config={**moe_config.default_config(4, 4, 2),
                                                   "BLOCK_SIZE_M": 24})


# ----------------------------------------------------------------------------- configs


def test_config_json_override_and_tuner(tmp_path):
    E, D, Fi, k = 4, 32, 48, 2
    path = tmp_path / "dev.json"
    default = moe_config.get_fused_moe_config(8, E, D, Fi, k, torch.float32, path=path)
    assert default == moe_config.default_config(8, E, k)
    cands = [{"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 16, "BLOCK_SIZE_K": 16, "GROUP_SIZE_M": 1,
                  "num_warps": 4, "num_stages": 2},
             {"BLOCK_SIZE_M": 32, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 1,
                  "num_warps": 4, "num_stages": 2}]
    best = moe_tune.tune_fused_moe(E, D, Fi, k, dtype=torch.float32, token_counts=(2, 8),
                                     candidates=cands, reps=1, warmup=0, path=path,
                                     verbose=False)
    data = json.loads(path.read_text())
    table = data["fused_moe"][moe_config.shape_key(E, Fi, D, k, torch.float32)]
    assert set(table) == {"2", "8"} and all(table[t] in cands for t in table)
    assert best[8] == table["8"]
    # nearest token count wins
    assert moe_config.get_fused_moe_config(7, E, D, Fi, k, torch.float32, path=path) == table["8"]
    assert moe_config.get_fused_moe_config(1, E, D, Fi, k, torch.float32, path=path) == table["2"]
    # other shapes keep the default
    assert moe_config.get_fused_moe_config(7, E, D, Fi, k, torch.bfloat16, path=path) == \
        moe_config.default_config(7, E, k)


def test_quick_tuning_candidates_are_few_valid_and_fit_shared_memory():
    cands = moe_tune.quick_candidates()
    assert 10 <= len(cands) <= 14
    assert cands[0] == {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 128,
                        "GROUP_SIZE_M": 1, "num_warps": 4, "num_stages": 3}  # the GPU default
    for c in cands:
        assert moe_config.validate_config(c) == c and c["BLOCK_SIZE_M"] == 16
        smem = (
            c["num_stages"]
            * (16 * c["BLOCK_SIZE_K"] + 2 * c["BLOCK_SIZE_K"] * c["BLOCK_SIZE_N"])
            * 2
        )
        assert smem <= 227 * 1024, c
    assert len({tuple(sorted(c.items())) for c in cands}) == len(cands)


def test_quick_tune_uses_decode_sizes(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(rt, "time_fn", lambda fn, **kw: seen.append(1) or [1e-3])
    best = moe_tune.tune_fused_moe(4, 32, 48, 2, dtype=torch.float32, quick=True,
                                     candidates=moe_tune.quick_candidates()[:2], reps=1,
                                     warmup=0, path=tmp_path / "q.json", verbose=False)
    assert sorted(best) == list(moe_tune.QUICK_TOKEN_COUNTS) and len(seen) == 2 * len(best)


def test_config_lookup_is_cached_until_the_file_changes(tmp_path, monkeypatch):
    E, D, Fi, k = 4, 32, 48, 2
    path = tmp_path / "dev.json"
    loads = []
    real = moe_config.load_device_configs
    monkeypatch.setattr(
        moe_config, "load_device_configs", lambda p=None: loads.append(p) or real(p)
    )
    moe_config._cached_config.cache_clear()
    for _ in range(3):
        moe_config.get_fused_moe_config(8, E, D, Fi, k, torch.float32, path=path)
    assert len(loads) == 1
    cfg = {**moe_config.default_config(8, E, k), "BLOCK_SIZE_N": 64}
    path.write_text(json.dumps({"fused_moe": {moe_config.shape_key(E, Fi, D, k, torch.float32):
                                              {"8": cfg}}}))
    assert moe_config.get_fused_moe_config(8, E, D, Fi, k, torch.float32, path=path) == cfg
    assert len(loads) == 2
