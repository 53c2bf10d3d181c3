"""Product-key retrieval with one key space per head.

Each head h owns two sub-key tables K_h^row, K_h^col in R^{n x d_h/2}. A query q_h is split in halves,
each half is scored against its table, and slot (i, j) of the n*n grid gets s_row[i] + s_col[j].
The top-k of the n*n grid is found exactly from the top-k of each half: in sorted order, pair (a, b)
is beaten by every pair (a', b') with a' <= a, b' <= b, so only pairs with (a+1)(b+1) <= k can reach
the final top-k.
"""

import torch
import torch.nn.functional as F

from .cpu_kernels import scores_backward as kernel_scores_backward, select as kernel_selection
from .cpu_kernels import norm_eps, supports as kernels_support

# a bound on the n*n grid (one bank row per slot: a bigger grid could never be allocated)
MAX_SLOTS = torch.iinfo(torch.int32).max


def staircase(topk: int) -> list[tuple[int, int, int]]:
    """The pairs (a, b) of ranks in the two sorted first-stage lists with (a+1)(b+1) <= topk, as blocks
    (first a, last a + 1, width): ranks a of one width topk // (a+1) share a block, b < width."""
    blocks = []
    for a in range(topk):
        width = topk // (a + 1)
        if blocks and blocks[-1][2] == width:
            blocks[-1] = (blocks[-1][0], a + 1, width)
        else:
            blocks.append((a, a + 1, width))
    return blocks


def pair_sums(rows: torch.Tensor, columns: torch.Tensor, topk: int) -> torch.Tensor:
    """rows[..., a] + columns[..., b] over the staircase's pairs, a-major: [..., k] x 2 -> [..., P].
    A broadcast add per block (about 2 sqrt(k) of them) instead of a gather of P scattered pairs."""
    return torch.cat([(rows[..., first:last, None] + columns[..., None, :width]).flatten(-2)
                      for first, last, width in staircase(topk)], dim=-1)


def staircase_ranks(topk: int, device: torch.device) -> torch.Tensor:
    """[2, P]: the ranks (a, b) of each staircase pair, in `pair_sums` order."""
    pairs = [(a, b) for first, last, width in staircase(topk) for a in range(first, last) for b in range(width)]
    return torch.tensor(pairs, device=device).T


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


def needs_gradient(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd will record an op on these tensors (None: an absent optional input)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def normalize_query(query: torch.Tensor, kind: str) -> torch.Tensor:
    """Parameter-free norm over each head's query (a learnable scale would duplicate the keys'), with the eps of
    `norm_eps` in every dtype, which the backward and the kernels normalise with too."""
    if kind == "rms":
        return F.rms_norm(query, (query.shape[-1],), eps=norm_eps(kind))
    if kind == "layer":
        return F.layer_norm(query, (query.shape[-1],), eps=norm_eps(kind))
    return query


def product_key_topk(query: torch.Tensor, keys: torch.Tensor, topk: int,
                     norm: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k over the n*n product keys of every head.

    query: [N, H, d_k], normalised first by `norm` (`normalize_query`); keys: [H, 2, n, d_k/2].
    Returns scores [N, H, topk] and slot ids [N, H, topk] in [0, n*n), in no particular order.
    On the CPU the selection is one kernel (cpu_kernels.select); elsewhere, and as its reference,
    PyTorch ops (`reference_selection`).
    """
    kernel = kernels_support(query, half_precision=True)
    if needs_gradient(query, keys):
        return ProductKeyScores.apply(query, keys, topk, norm, kernel)
    if not kernel and query.shape[0] <= DECODE_MAX_TOKENS:
        return decode_topk(normalize_query(query, norm), keys, topk)
    scores = sub_key_scores(normalize_query(query, norm), keys)
    return (kernel_selection if kernel else reference_selection)(scores, topk)


def reference_selection(scores: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k of the staircase pairs from sub-key scores [N, H, 2, n]: scores and slots [N, H, k]."""
    n = scores.shape[-1]
    half_scores, half_ids = scores.topk(topk, dim=-1, sorted=True)  # [N, H, 2, k]
    candidates = pair_sums(half_scores[:, :, 0], half_scores[:, :, 1], topk)  # [N, H, P]
    best_scores, best = candidates.topk(topk, dim=-1, sorted=False)
    # the winners' ranks in each half, then their sub-key ids: [N, H, 2, k] (rows, then columns)
    ranks = staircase_ranks(topk, scores.device)[:, best].permute(1, 2, 0, 3)
    ids = half_ids.gather(-1, ranks)
    return best_scores, ids[:, :, 0] * n + ids[:, :, 1]


class ProductKeyScores(torch.autograd.Function):
    """`product_key_topk` with a gradient: the winners' sums s_row[i] + s_col[j], differentiable in the query and
    the keys. It keeps the query before its norm (the attention keeps it too, for its own backward), the keys
    and the slots (the pooling keeps them too); the backward normalises the query again, which is cheap, rather
    than keeping it, and never keeps the [N, H, 2, n] score grid (benchmarks/memory_cost.py). On the CPU the
    backward is one kernel that reads only the sub-keys each query retrieved (cpu_kernels.scores_backward);
    elsewhere, and as its reference, the grid's gradient and two batched matmuls over it."""

    @staticmethod
    def forward(ctx, query, keys, topk, norm, kernel):
        scores = sub_key_scores(normalize_query(query, norm), keys)
        best_scores, slots = (kernel_selection if kernel else reference_selection)(scores, topk)
        ctx.save_for_backward(query, keys, slots)
        ctx.norm = norm
        ctx.mark_non_differentiable(slots)
        return best_scores, slots

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad, _):
        query, keys, slots = ctx.saved_tensors
        if kernels_support(grad, half_precision=True) and not torch.compiler.is_compiling():
            return *kernel_scores_backward(query, keys, slots, grad, ctx.norm), None, None, None
        heads, _, n, half_dim = keys.shape
        # each winner's gradient into its two sub-keys' scores: the grid [N, H, 2, n], as [H*2, N, n]
        rows, columns = sub_key_ids(slots, n)
        grid = grad.new_zeros(*slots.shape[:2], 2, n)
        grid[:, :, 0].scatter_add_(-1, rows, grad)
        grid[:, :, 1].scatter_add_(-1, columns, grad)
        grid = grid.flatten(1, 2).transpose(0, 1)
        # scores = halves @ keys^T per (head, half), as in sub_key_scores
        compute = torch.promote_types(query.dtype, torch.float32)
        normalized, scale = normalize_with_scale(query.to(compute), ctx.norm)
        halves = normalized.to(query.dtype).view(-1, heads * 2, half_dim).transpose(0, 1)
        grad_keys = torch.bmm(grid.transpose(1, 2), halves).view(keys.shape)
        grad_normalized = torch.bmm(grid, keys.reshape(heads * 2, n, half_dim)).transpose(0, 1).reshape(query.shape)
        grad_query = normalize_query_backward(grad_normalized.to(compute), normalized, scale, ctx.norm)
        return grad_query.to(query.dtype), grad_keys, None, None, None


def normalize_with_scale(query: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`normalize_query` by hand, y = centred * scale, with centred = x - mean(x) (layer) or x (rms, none) and
    scale = 1 / sqrt(mean(centred²) + norm_eps(kind)) (none: 1): y and the scale."""
    if kind == "none":
        return query, query.new_ones(())
    centred = query - query.mean(-1, keepdim=True) if kind == "layer" else query
    scale = torch.rsqrt(centred.square().mean(-1, keepdim=True) + norm_eps(kind))
    return centred * scale, scale


def normalize_query_backward(grad: torch.Tensor, normalized: torch.Tensor, scale: torch.Tensor, kind: str) -> torch.Tensor:
    """The input's gradient of y = centred * scale: scale (dy - y mean(dy y)) for rms, scale (dy - mean(dy) -
    y mean(dy y)) for layer (y has zero mean there), dy for none."""
    if kind == "none":
        return grad
    grad = grad - normalized * (grad * normalized).mean(-1, keepdim=True)
    if kind == "layer":
        grad = grad - grad.mean(-1, keepdim=True)
    return scale * grad


def sub_key_ids(slots: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Slot i*n + j -> its row and column sub-keys (i, j)."""
    return torch.div(slots, n, rounding_mode="floor"), torch.remainder(slots, n)


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
