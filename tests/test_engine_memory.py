"""Host memory for expert weights: one flat allocation of exactly the bytes needed (PyTorch's
pinned allocator would round each layer up to a power of two: 2.8 GB -> 4 GiB per Mixtral
layer), page-locked in place with one cudaHostRegister and unregistered when no tensor uses it."""
import gc
import mmap

import pytest
import torch
from specmoe.engine import weights as wmod
from specmoe.engine.config import MoEConfig
from specmoe.engine.weights import arena_of, expert_buffers, random_model

CFG = MoEConfig(hidden=48, layers=3, experts=4, expert_ffn=40, dtype="bfloat16")


def exact_bytes(cfg):
    n = cfg.layers * cfg.experts * cfg.expert_params * cfg.torch_dtype.itemsize
    return -(-n // mmap.PAGESIZE) * mmap.PAGESIZE


@pytest.fixture
def cuda_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(wmod, "_cuda_host_register", lambda p, n: calls.append(("reg", p, n)))
    monkeypatch.setattr(wmod, "_cuda_host_unregister", lambda p: calls.append(("unreg", p)))
    return calls


def test_expert_buffers_are_views_of_one_allocation_of_exact_size():
    bufs = expert_buffers(CFG)
    assert [tuple(b.shape) for b in bufs] == [(CFG.experts, CFG.expert_params)] * CFG.layers
    storage = bufs[0].untyped_storage()
    assert storage.nbytes() == exact_bytes(CFG)
    assert all(b.untyped_storage().data_ptr() == storage.data_ptr() for b in bufs)
    row = CFG.experts * CFG.expert_params * 2
    assert [b.data_ptr() - storage.data_ptr() for b in bufs] == [0, row, 2 * row]
    bufs[1].fill_(3.0)
    assert float(bufs[0].abs().sum()) == 0 and float(bufs[2].abs().sum()) == 0
    # Mixtral-8x7B, 32 layers: 90.2 GB, not the 128 GiB of power-of-two pinned blocks
    mixtral = MoEConfig(hidden=4096, experts=8, expert_ffn=14336, layers=32, dtype="bfloat16")
    assert exact_bytes(mixtral) < 90.2e9 + mmap.PAGESIZE < 128 * 2**30


def test_pinning_registers_the_arena_once_in_place(cuda_calls):
    w = random_model(CFG, seed=0)
    before = [b.data_ptr() for b in w.experts]
    arena = arena_of(w.experts)
    assert arena is not None and cuda_calls == []
    w.pin()
    w.pin()  # the second is a no-op
    assert cuda_calls == [("reg", arena.ptr, exact_bytes(CFG))]
    assert [b.data_ptr() for b in w.experts] == before  # registered in place, nothing copied
    pinned = random_model(CFG, seed=0, pin=True)
    assert cuda_calls[1] == ("reg", arena_of(pinned.experts).ptr, exact_bytes(CFG))
    assert all(torch.equal(a, b) for a, b in zip(w.experts, pinned.experts))


def test_the_arena_is_unregistered_when_its_last_view_goes(cuda_calls):
    bufs = expert_buffers(CFG, pin=True)
    ptr = arena_of(bufs).ptr
    keep = bufs[2]
    del bufs
    gc.collect()
    assert ("unreg", ptr) not in cuda_calls  # a view still uses it
    del keep
    gc.collect()
    assert cuda_calls == [("reg", ptr, exact_bytes(CFG)), ("unreg", ptr)]


def test_buffers_not_from_an_arena_are_copied_into_one(cuda_calls):
    w = random_model(CFG, seed=1)
    w.experts = [b.clone() for b in w.experts]
    assert arena_of(w.experts) is None
    ref = [b.clone() for b in w.experts]
    w.pin()
    assert arena_of(w.experts) is not None and len(cuda_calls) == 1
    assert all(torch.equal(a, b) for a, b in zip(ref, w.experts))
