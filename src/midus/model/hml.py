"""The Head-wise Memory Layer (HML) and the classic product-key memory (PKM) baseline."""

import torch
from torch import nn

from .cpu_kernels import retrieve as kernel_retrieve, supports as kernels_support
from .retrieval import DECODE_MAX_TOKENS, needs_gradient, product_key_topk
from .values import SharedValues, build_values


class ProductKeys(nn.Module):
    """Sub-key tables for `heads` key spaces: keys [H, 2, n, d_k/2], top-k softmax retrieval."""

    def __init__(self, heads: int, key_dim: int, n_keys: int, topk: int):
        super().__init__()
        self.topk = topk
        self.keys = nn.Parameter(torch.empty(heads, 2, n_keys, key_dim // 2))

    def forward(self, query: torch.Tensor, norm: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
        """query [N, H, d_k], normalised by `norm` -> slots [N, H, k], weights [N, H, k] (softmax over the
        k scores)."""
        keys = self.keys if self.keys.dtype == query.dtype else self.keys.to(query.dtype)
        if one_call_retrieval(query, keys):
            return kernel_retrieve(query, keys, self.topk, norm)
        scores, slots = product_key_topk(query, keys, self.topk, norm)
        # softmax in at least fp32 (bf16 scores would round the weights)
        weights = scores.to(torch.promote_types(scores.dtype, torch.float32)).softmax(-1)
        return slots, weights.to(query.dtype)


def one_call_retrieval(query: torch.Tensor, keys: torch.Tensor) -> bool:
    """Decode on the CPU: a few queries without gradients are bound by the number of ops, not their size,
    so the kernels do norm, scores, selection and softmax in one call (compiled: one custom op)."""
    return not needs_gradient(query, keys) and query.shape[0] <= DECODE_MAX_TOKENS and kernels_support(query)


class HeadwiseMemoryLayer(nn.Module):
    """HML: each attention head's output a_h queries its own product keys (no query projection);
    the retrieved slots are realised by `values` (HIVE by default) into R^d."""

    def __init__(self, config, owns_bank: bool = True):
        super().__init__()
        memory = config.memory
        self.heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.query_norm = memory["query_norm"]
        self.retrieval = ProductKeys(self.heads, self.head_dim, memory["n_keys"], memory["topk"])
        self.values = build_values(memory["values"], memory["n_keys"] ** 2, self.heads, self.head_dim,
                                   memory["latent_dim"], config.hidden_size, owns_bank)
        self.head_mask = None  # [H] multiplier on each head's contribution (analysis)

    def retrieve(self, heads_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[..., H, d_h] attention outputs -> slots, weights [N, H, k] over the flattened positions."""
        return self.retrieval(heads_output.reshape(-1, self.heads, self.head_dim), self.query_norm)

    def forward(self, heads_output: torch.Tensor, shared_bank: torch.Tensor | None = None) -> torch.Tensor:
        slots, weights = self.retrieve(heads_output)
        out = self.values(slots, weights, shared_bank, self.head_mask)
        return out.view(*heads_output.shape[:-2], -1)


class ProductKeyMemory(nn.Module):
    """Classic PKM (Lample et al. 2019) in place of an FFN: a query projection from the hidden state
    into `pkm_heads` key spaces, one value table [n*n, d] shared by the heads, heads summed."""

    def __init__(self, config, owns_bank: bool = True):
        super().__init__()
        memory = config.memory
        self.heads, self.key_dim = memory["pkm_heads"], memory["pkm_key_dim"]
        self.query_norm = memory["query_norm"]
        self.query_proj = nn.Linear(config.hidden_size, self.heads * self.key_dim, bias=False)
        self.retrieval = ProductKeys(self.heads, self.key_dim, memory["n_keys"], memory["topk"])
        self.values = SharedValues(memory["n_keys"] ** 2, self.heads, config.hidden_size, owns_bank)

    def forward(self, hidden_states: torch.Tensor, shared_bank: torch.Tensor | None = None) -> torch.Tensor:
        query = self.query_proj(hidden_states).view(-1, self.heads, self.key_dim)
        slots, weights = self.retrieval(query, self.query_norm)
        return self.values(slots, weights, shared_bank).view(hidden_states.shape)
