"""Shared fixtures. Engine tests run torch on one thread: small ops are faster so on 2 shared cores."""
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
