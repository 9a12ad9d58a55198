"""Shared fixtures. Engine tests run torch on one thread: small ops are faster so on 2 shared
cores."""

import pytest


@pytest.fixture(autouse=True, scope="module")
def _engine_tests_one_thread(request):
    if not request.module.__name__.split(".")[-1].startswith("test_engine"):
        yield
        return
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _greedy_reference(cfg, weights, prompts, new_tokens):
    """Greedy decoding one sequence at a time with every expert resident: no engine policy
    involved."""
    import torch
    from specmoe.engine.model import KVCache, Transformer
    from specmoe.engine.moe import ResidentExperts

    model = Transformer(cfg, weights.dense, ResidentExperts(cfg, weights.experts, "cpu"))
    out = []
    for p in prompts:
        cache = KVCache(cfg, 1, cfg.max_seq_len, "cpu")
        logits = model.logits(model.forward(torch.tensor([p]), cache, "prefill"))[0, -1]
        cache.lengths[0] = len(p)
        toks = [int(logits.argmax())]
        while len(toks) < new_tokens:
            logits = model.logits(model.forward(torch.tensor([[toks[-1]]]), cache, "decode"))[0, -1]
            cache.lengths[0] += 1
            toks.append(int(logits.argmax()))
        out.append(toks)
    return out


@pytest.fixture(scope="session")
def greedy_reference():
    return _greedy_reference
