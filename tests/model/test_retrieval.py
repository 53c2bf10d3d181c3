import pytest
import torch

from midus.model import cpu_kernels
from midus.model.hml import ProductKeys
from midus.model.retrieval import (DECODE_MAX_TOKENS, normalize_query, pair_sums, product_key_topk, staircase,
                                   staircase_ranks)


@pytest.fixture(autouse=True, params=["kernel", "pytorch"])
def selection(request, monkeypatch):
    """Every test here runs on both paths: the CPU kernel and the PyTorch reference."""
    if request.param == "pytorch":
        monkeypatch.setenv("MIDUS_CPU_KERNELS", "0")
    assert cpu_kernels.supports(torch.zeros(1)) == (request.param == "kernel")


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


@pytest.mark.parametrize("topk", [1, 4, 7, 32])
def test_staircase_is_the_pruned_set(topk):
    pairs = [(a, b) for first, last, width in staircase(topk) for a in range(first, last) for b in range(width)]
    assert pairs == [(a, b) for a in range(topk) for b in range(topk) if (a + 1) * (b + 1) <= topk]  # a-major
    if topk == 32:
        assert len(pairs) < 32 * 32 // 7  # ~k ln k candidates instead of k^2


def test_pair_sums_add_each_pair_once_in_staircase_order_and_the_ranks_name_the_pairs():
    rows, columns = torch.randn(3, 2, 8), torch.randn(3, 2, 8)
    pairs = [(a, b) for first, last, width in staircase(8) for a in range(first, last) for b in range(width)]
    expected = torch.stack([rows[..., a] + columns[..., b] for a, b in pairs], dim=-1)
    torch.testing.assert_close(pair_sums(rows, columns, 8), expected, rtol=0, atol=0)
    ranks = staircase_ranks(8, torch.device("cpu"))
    assert ranks.shape == (2, len(pairs)) and ranks.T.tolist() == [list(pair) for pair in pairs]
    torch.testing.assert_close(pair_sums(rows, columns, 8), rows[..., ranks[0]] + columns[..., ranks[1]], rtol=0, atol=0)


@pytest.mark.parametrize("norm", ["none", "rms", "layer"])
@pytest.mark.parametrize("n_tokens", [DECODE_MAX_TOKENS + 1, 40])
def test_training_and_inference_retrieval_agree_exactly_and_gradients_match_the_exhaustive_ones(n_tokens, norm):
    """Training and inference select the same slots with the same sums, bit for bit; training's gradient
    (the score grid's by hand, the query normalised again in the backward) is autograd's through the norm
    and the exhaustive top-k."""
    torch.manual_seed(n_tokens)
    query = 2 * torch.randn(n_tokens, 3, 16, dtype=torch.float64) + 0.5
    query.requires_grad_()
    keys = torch.randn(3, 2, 16, 8, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        scores_inference, slots_inference = product_key_topk(query, keys, 8, norm)
    scores, slots = product_key_topk(query, keys, 8, norm)
    assert torch.equal(slots, slots_inference) and torch.equal(scores, scores_inference)
    weights = torch.arange(8, dtype=torch.float64)
    order = scores.argsort(dim=-1, descending=True)
    ours = torch.autograd.grad((scores.gather(-1, order) * weights).sum(), (query, keys))
    best = exhaustive_topk(normalize_query(query, norm), keys, 8).values
    reference = torch.autograd.grad((best * weights).sum(), (query, keys))
    for mine, theirs in zip(ours, reference):
        torch.testing.assert_close(mine, theirs)


@pytest.mark.parametrize("n_tokens", [1, 5, DECODE_MAX_TOKENS])
def test_decode_path_equals_the_general_path(n_tokens):
    """Few tokens without gradients take the k x k grid on the PyTorch path (decode_topk): same slots,
    same scores."""
    torch.manual_seed(100 + n_tokens)
    query = torch.randn(n_tokens, 4, 32)
    keys = torch.randn(4, 2, 64, 16)
    with torch.no_grad():
        decode = product_key_topk(query, keys, 32)
    general = product_key_topk(query.requires_grad_(), keys, 32)  # a gradient is wanted: the pruned pairs
    decode_order, general_order = decode[1].argsort(dim=-1), general[1].argsort(dim=-1)
    assert torch.equal(decode[1].gather(-1, decode_order), general[1].gather(-1, general_order))
    assert torch.equal(decode[0].gather(-1, decode_order), general[0].detach().gather(-1, general_order))


@pytest.mark.parametrize("norm", ["none", "rms", "layer"])
@pytest.mark.parametrize("n_tokens", [1, DECODE_MAX_TOKENS])
def test_product_keys_decode_equals_the_training_retrieval(norm, n_tokens):
    """Decode (few queries, no gradient: one kernel call on the CPU) and training (norm, scores,
    selection, softmax as PyTorch ops with a gradient) give the same slots and weights."""
    torch.manual_seed(7 + n_tokens)
    retrieval = ProductKeys(4, 32, 64, 32)
    torch.nn.init.normal_(retrieval.keys)
    query = 2 * torch.randn(n_tokens, 4, 32) + 0.5
    with torch.no_grad():
        slots, weights = retrieval(query, norm)
    train_slots, train_weights = retrieval(query.requires_grad_(), norm)
    order, train_order = slots.argsort(-1), train_slots.argsort(-1)
    assert torch.equal(slots.gather(-1, order), train_slots.gather(-1, train_order))
    torch.testing.assert_close(weights.gather(-1, order), train_weights.detach().gather(-1, train_order))


@pytest.mark.parametrize("norm", ["rms", "layer"])
def test_a_small_query_is_normalised_alike_in_float32_and_bfloat16(norm):
    """One eps for every dtype: with bf16's own (2^-7, F.rms_norm's default there) a query of RMS 0.02, as in
    SmolLM2's early heads, came out ~4.5x smaller than in float32 and its softmax over the top-k far flatter."""
    torch.manual_seed(11)
    query = 0.02 * torch.randn(64, 3, 32)
    retrieval = ProductKeys(3, 32, 16, 8)
    torch.nn.init.normal_(retrieval.keys, std=0.3)  # a top weight of ~0.5: bf16's rounding of the scores stays small
    normalized = normalize_query(query, norm)
    torch.testing.assert_close(normalize_query(query.bfloat16(), norm).float(), normalized, rtol=2e-2, atol=2e-2)
    _, weights = retrieval(query, norm)
    _, half_weights = retrieval.to(torch.bfloat16)(query.bfloat16(), norm)
    sharpest = weights.sort(-1, descending=True).values  # bf16's rounding may swap near-tied slots: compare by rank
    torch.testing.assert_close(half_weights.float().sort(-1, descending=True).values, sharpest, rtol=0, atol=2e-2)
