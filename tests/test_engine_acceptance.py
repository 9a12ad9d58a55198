"""The engine's synthetic acceptance keeps the leading run of accepted drafts, as real
verification does: the mean accepted count is τ(γ) − 1 (hand-computed law, seeded sample)."""
import pytest

torch = pytest.importorskip("torch")

from specmoe.engine.speculative import accept_synthetic  # noqa: E402

from specmoe.inputs.workload import tau  # noqa: E402


def test_accepted_count_is_the_leading_run_of_coins():
    alpha, g, B = 0.6, 4, 20000
    coin = torch.Generator().manual_seed(1)
    logits = torch.zeros(B, g + 1, 5)
    n, _ = accept_synthetic(g, logits, alpha, coin, 0.0, None)
    # Leading run of i.i.d. coins: E[n] = α + α² + … + α^γ = τ(γ) − 1; all coins would give γ·α.
    assert float(n.float().mean()) == pytest.approx(float(tau(alpha, g)) - 1.0, abs=0.03)
    assert float(n.float().mean()) < g * alpha - 0.3


def test_no_draft_accepted_at_alpha_zero_and_all_at_alpha_one():
    coin = torch.Generator().manual_seed(0)
    logits = torch.zeros(8, 4, 3)
    assert int(accept_synthetic(3, logits, 0.0, coin, 0.0, None)[0].sum()) == 0
    assert accept_synthetic(3, logits, 1.0, coin, 0.0, None)[0].tolist() == [3] * 8
