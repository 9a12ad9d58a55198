"""Affinity ranking: nearest experts by L2 distance, self first, ties broken by the lower id so
that every device substitutes the same experts."""
import torch
from specmoe.engine.affinity import affinity_ranking, l2_distances, ranking, substitute


def test_distances_are_exact_squared_l2_in_float64():
    g = torch.Generator().manual_seed(0)
    buf = torch.randn(5, 300, generator=g).to(torch.bfloat16)
    d = l2_distances(buf)
    ref = torch.cdist(buf.double(), buf.double()) ** 2
    assert d.dtype == torch.float64 and torch.allclose(d, ref, rtol=1e-9, atol=1e-6)


def test_ties_go_to_the_lower_id_and_self_comes_first():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(64, generator=g), torch.randn(64, generator=g)
    buf = torch.stack([a, b, b, b, a])  # 1, 2, 3 identical; 0 and 4 identical
    r = affinity_ranking([buf])[0]
    assert r[0] == [0, 4, 1, 2, 3] and r[4] == [4, 0, 1, 2, 3]
    assert r[2] == [2, 1, 3, 0, 4] and r[3] == [3, 1, 2, 0, 4]
    assert substitute(r, {3, 4}) == [4, 3, 3, 3, 4]


def test_rounding_noise_does_not_reorder_near_ties():
    """Distances that differ by far less than TIE_RTOL (what fp summation order changes on
    another device) rank the same both ways."""
    d = torch.tensor([[0.0, 2.0, 2.0, 5.0], [2.0, 0.0, 1.0, 1.0],
                      [2.0, 1.0, 0.0, 3.0], [5.0, 1.0, 3.0, 0.0]], dtype=torch.float64)
    up, down = d.clone(), d.clone()
    up[0, 2] += 1e-13
    down[0, 2] -= 1e-13
    assert ranking(up) == ranking(down) == ranking(d)
    assert ranking(d)[0] == [0, 1, 2, 3] and ranking(d)[1] == [1, 2, 3, 0]
    far = d.clone()
    far[0, 2] -= 1e-3  # a real difference still counts
    assert ranking(far)[0] == [0, 2, 1, 3]
