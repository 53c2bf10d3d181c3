import pytest
import torch

from midus.model.retrieval import candidate_pairs, product_key_topk


def exhaustive_topk(query, keys, topk):
    """Score all n*n slots of every head and take the top-k: the definition retrieval must match."""
    n_tokens, heads, key_dim = query.shape
    n = keys.shape[2]
    half = key_dim // 2
    s_row = torch.einsum("thd,hnd->thn", query[..., :half], keys[:, 0])
    s_col = torch.einsum("thd,hnd->thn", query[..., half:], keys[:, 1])
    grid = (s_row.unsqueeze(-1) + s_col.unsqueeze(-2)).reshape(n_tokens, heads, n * n)  # slot i*n + j
    return grid.topk(topk, dim=-1)


@pytest.mark.parametrize("n, k, head_dim", [(4, 1, 2), (8, 4, 16), (16, 8, 8), (32, 32, 64), (64, 32, 64), (16, 16, 32)])
def test_retrieval_equals_exhaustive_topk(n, k, head_dim):
    torch.manual_seed(n * 1000 + k)
    heads = 3
    query = torch.randn(37, heads, head_dim, dtype=torch.float64)
    keys = torch.randn(heads, 2, n, head_dim // 2, dtype=torch.float64)
    scores, slots = product_key_topk(query, keys, k)
    order = scores.argsort(dim=-1, descending=True)  # the top-k set is returned in no particular order
    scores, slots = scores.gather(-1, order), slots.gather(-1, order)
    ref_scores, ref_slots = exhaustive_topk(query, keys, k)
    assert torch.equal(slots, ref_slots)
    torch.testing.assert_close(scores, ref_scores)
    torch.testing.assert_close(scores.softmax(-1), ref_scores.softmax(-1))


def test_candidate_pairs_are_the_pruned_set():
    rows, cols = candidate_pairs(32, torch.device("cpu"))
    pairs = set(zip(rows.tolist(), cols.tolist()))
    assert pairs == {(a, b) for a in range(32) for b in range(32) if (a + 1) * (b + 1) <= 32}
    assert len(pairs) < 32 * 32 // 7  # ~k ln k candidates instead of k^2
