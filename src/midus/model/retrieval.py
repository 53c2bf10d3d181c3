"""Product-key retrieval with one key space per head.

Each head h owns two sub-key tables K_h^row, K_h^col in R^{n x d_h/2}. A query q_h is split in halves,
each half is scored against its table, and slot (i, j) of the n*n grid gets s_row[i] + s_col[j].
The top-k of the n*n grid is found exactly from the top-k of each half: in sorted order, pair (a, b)
is beaten by every pair (a', b') with a' <= a, b' <= b, so only pairs with (a+1)(b+1) <= k can reach
the final top-k.
"""

from functools import lru_cache

import torch

# a bound on the n*n grid (one bank row per slot: a bigger grid could never be allocated)
MAX_SLOTS = torch.iinfo(torch.int32).max


@lru_cache(maxsize=None)
def candidate_pairs(topk: int, device: torch.device) -> torch.Tensor:
    """Rank pairs (a, b) of the two sorted first-stage lists with (a+1)(b+1) <= topk, as [P, 2]
    positions (a, topk + b) in the two lists laid end to end."""
    pairs = [(a, topk + b) for a in range(topk) for b in range(topk // (a + 1))]
    return torch.tensor(pairs, device=device)


# up to this many tokens without gradients (decode: one per sequence), the k x k grid beats the pairs
DECODE_MAX_TOKENS = 16


def sub_key_scores(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """query [N, H, d_k], keys [H, 2, n, d_k/2] -> scores [N, H, 2, n] of both halves against their tables."""
    n_tokens, heads, key_dim = query.shape
    n = keys.shape[2]
    halves = query.view(n_tokens, heads * 2, key_dim // 2).transpose(0, 1)
    # both halves of all heads in one batched matmul: [H*2, N, d_k/2] @ [H*2, d_k/2, n]
    scores = torch.bmm(halves, keys.reshape(heads * 2, n, key_dim // 2).transpose(1, 2))
    return scores.view(heads, 2, n_tokens, n).permute(2, 0, 1, 3)


def product_key_topk(query: torch.Tensor, keys: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k over the n*n product keys of every head.

    query: [N, H, d_k]; keys: [H, 2, n, d_k/2].
    Returns scores [N, H, topk] and slot ids [N, H, topk] in [0, n*n), in no particular order.
    """
    n_tokens, heads, _ = query.shape
    n = keys.shape[2]
    needs_grad = torch.is_grad_enabled() and (query.requires_grad or keys.requires_grad)
    if not needs_grad and n_tokens <= DECODE_MAX_TOKENS:
        return decode_topk(query, keys, topk)
    scores = sub_key_scores(query, keys)

    with torch.no_grad():  # selection only: gradients flow through the gathered scores below
        half_scores, half_ids = scores.topk(topk, dim=-1, sorted=True)  # [N, H, 2, k]
        pairs = candidate_pairs(topk, query.device)  # [P, 2]
        candidates = half_scores.flatten(-2)[..., pairs]  # [N, H, P, 2]: row score, column score
        best_scores, best = (candidates[..., 0] + candidates[..., 1]).topk(topk, dim=-1, sorted=False)
        ids = half_ids.flatten(-2).gather(-1, pairs[best].flatten(-2)).view(n_tokens, heads, topk, 2)
    slots = ids[..., 0] * n + ids[..., 1]
    if needs_grad:
        # the same sums, now from the scores themselves: [N, H, 2, k] (row ids, then column ids)
        picked = scores.gather(-1, ids.transpose(-1, -2))
        best_scores = picked[:, :, 0] + picked[:, :, 1]
    return best_scores, slots


def decode_topk(query: torch.Tensor, keys: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`product_key_topk` for a few tokens without gradients: the whole k x k grid of the two sorted
    lists (a superset of the pruned pairs, so still exact) in fewer, larger ops, as one-token decode
    is bound by the number of ops, not their size."""
    n = keys.shape[2]
    half_scores, half_ids = sub_key_scores(query, keys).topk(topk, dim=-1, sorted=True)  # [N, H, 2, k]
    grid = half_scores[:, :, 0, :, None] + half_scores[:, :, 1, None, :]  # [N, H, k, k]
    best_scores, best = grid.flatten(-2).topk(topk, dim=-1, sorted=False)
    grid_slots = torch.add(half_ids[:, :, 1, None, :], half_ids[:, :, 0, :, None], alpha=n)  # row * n + col
    return best_scores, grid_slots.flatten(-2).gather(-1, best)
