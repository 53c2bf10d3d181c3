"""Product-key retrieval with one key space per head.

Each head h owns two sub-key tables K_h^row, K_h^col in R^{n x d_h/2}. A query q_h is split in halves,
each half is scored against its table, and slot (i, j) of the n*n grid gets s_row[i] + s_col[j].
The top-k of the n*n grid is found exactly from the top-k of each half: in sorted order, pair (a, b)
is beaten by every pair (a', b') with a' <= a, b' <= b, so only pairs with (a+1)(b+1) <= k can reach
the final top-k.
"""

from functools import lru_cache

import torch

# n*n slot ids are handed to embedding_bag as int32: the grid must fit.
MAX_SLOTS = torch.iinfo(torch.int32).max


@lru_cache(maxsize=None)
def candidate_pairs(topk: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank pairs (a, b) of the two sorted first-stage lists with (a+1)(b+1) <= topk."""
    pairs = [(a, b) for a in range(topk) for b in range(topk // (a + 1))]
    rows, cols = zip(*pairs)
    return torch.tensor(rows, device=device), torch.tensor(cols, device=device)


def product_key_topk(query: torch.Tensor, keys: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k over the n*n product keys of every head.

    query: [N, H, d_k]; keys: [H, 2, n, d_k/2].
    Returns scores [N, H, topk] and slot ids [N, H, topk] in [0, n*n), in no particular order.
    """
    n_tokens, heads, key_dim = query.shape
    n = keys.shape[2]
    halves = query.view(n_tokens, heads, 2, key_dim // 2)
    # both halves of all heads in one batched matmul: [H*2, N, d_k/2] @ [H*2, d_k/2, n]
    scores = torch.bmm(halves.permute(1, 2, 0, 3).reshape(heads * 2, n_tokens, key_dim // 2),
                       keys.reshape(heads * 2, n, key_dim // 2).transpose(1, 2))
    scores = scores.view(heads, 2, n_tokens, n).permute(2, 0, 1, 3)  # [N, H, 2, n]

    with torch.no_grad():  # selection only: gradients flow through the gathered scores below
        half_scores, half_ids = scores.topk(topk, dim=-1, sorted=True)  # [N, H, 2, k]
        rank_row, rank_col = candidate_pairs(topk, query.device)
        candidates = half_scores[:, :, 0, rank_row] + half_scores[:, :, 1, rank_col]  # [N, H, P]
        best = candidates.topk(topk, dim=-1, sorted=False).indices  # the set matters, not its order
        row_ids = half_ids[:, :, 0].gather(-1, rank_row[best])
        col_ids = half_ids[:, :, 1].gather(-1, rank_col[best])
    best_scores = scores[:, :, 0].gather(-1, row_ids) + scores[:, :, 1].gather(-1, col_ids)
    return best_scores, row_ids * n + col_ids
