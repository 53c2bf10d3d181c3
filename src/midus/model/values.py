"""Value realisations of the head-wise memory: HIVE and the two ablation variants.

Every variant reads a table ("bank") at the retrieved slots with the retrieval weights. The bank is
either owned by the module or, with `share_bank`, owned once by the model and passed to `forward`.
"""

import torch
import torch.nn.functional as F
from packaging.version import Version
from torch import nn

from .cpu_kernels import pool as kernel_pool, pool_backward as kernel_pool_backward, supports as kernels_support
from .retrieval import needs_gradient

# weighted embedding_bag has forward and backward kernels for these; elsewhere (e.g. mps) we gather
EMBEDDING_BAG_DEVICES = ("cpu", "cuda")
EMBEDDING_BAG_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# embedding_bag's CUDA backward in bfloat16: the bank's gradient since torch 2.6 (pytorch#141998), the
# weights' since 2.13 (pytorch#185808; before, a NotImplementedError in the backward)
CUDA_BF16_BACKWARD = Version(torch.__version__).release >= (2, 13)


def embedding_bag_supported(device_type: str, dtype: torch.dtype) -> bool:
    return device_type in EMBEDDING_BAG_DEVICES and dtype in EMBEDDING_BAG_DTYPES


def float32_backward(device_type: str, dtype: torch.dtype, backward: bool,
                     cuda_bf16_backward: bool = CUDA_BF16_BACKWARD) -> bool:
    """Where embedding_bag has no bfloat16 backward: pool in float32 (the bank has only n² rows)."""
    return backward and device_type == "cuda" and dtype == torch.bfloat16 and not cuda_bf16_backward


def pool(bank: torch.Tensor, slots: torch.Tensor, weights: torch.Tensor,
         projection: torch.Tensor | None = None) -> torch.Tensor:
    """sum_t weights[..., t] * bank[slots[..., t]]: [M, k] slots and weights -> [M, dim]. With a `projection`
    [out, G * dim] (HIVE's), the pooled rows of each G consecutive bags are concatenated and projected: [M / G, out]."""
    weights = weights if weights.dtype == bank.dtype else weights.to(bank.dtype)
    backward = needs_gradient(bank, weights, projection)
    if not backward and kernels_support(bank):  # decode's common case first: each check costs ~1 µs there
        return project(kernel_pool(bank, slots, weights), projection)
    if not embedding_bag_supported(bank.device.type, bank.dtype):
        pooled = gather_pool(bank, slots, weights)
    elif float32_backward(bank.device.type, bank.dtype, backward):
        pooled = F.embedding_bag(slots, bank.float(), per_sample_weights=weights.float(), mode="sum").to(bank.dtype)
    # with a gradient on the CPU the kernels too (compiled: embedding_bag)
    elif backward and kernels_support(bank) and not torch.compiler.is_compiling():
        return KernelPool.apply(bank, slots, weights, projection)
    else:
        pooled = F.embedding_bag(slots, bank, per_sample_weights=weights, mode="sum")
    return project(pooled, projection)


def project(pooled: torch.Tensor, projection: torch.Tensor | None) -> torch.Tensor:
    if projection is None:
        return pooled
    return F.linear(pooled.view(-1, projection.shape[1]), projection)


def gather_pool(bank: torch.Tensor, slots: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The same weighted sum with a plain gather (fallback, and the reference in tests)."""
    return (bank[slots] * weights.to(bank.dtype).unsqueeze(-1)).sum(-2)


class KernelPool(torch.autograd.Function):
    """`pool` through the CPU kernels (cpu_kernels.pool, pool_backward): the bank's gradient rows scattered by
    slot, the weights' as one dot per retrieved row. embedding_bag's own CPU backward reduces slot by slot after
    a sort (several times slower, benchmarks/memory_cost.py). With a projection it keeps no pooled rows (HIVE's
    [N, H * r] latents): the backward pools them again in the pass that reads the rows for the weights' gradient."""

    @staticmethod
    def forward(ctx, bank, slots, weights, projection):
        ctx.save_for_backward(bank, slots, weights, projection)
        return project(kernel_pool(bank, slots, weights), projection)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        bank, slots, weights, projection = ctx.saved_tensors
        bank_grad, _, weights_grad, projection_grad = ctx.needs_input_grad
        # the projection's matmuls in the dtype of its output, as autocast ran it in the forward
        grad_pooled = grad if projection is None else (grad @ projection.to(grad.dtype)).view(-1, bank.shape[1])
        grad_bank, grad_weights, pooled = kernel_pool_backward(bank, slots, weights, grad_pooled.to(bank.dtype),
                                                               bank_grad, weights_grad, pooled=projection_grad)
        grad_projection = grad.T @ pooled.view(grad.shape[0], -1).to(grad.dtype) if projection_grad else None
        return grad_bank, None, grad_weights, grad_projection


class HiveProjection(nn.Linear):
    """HIVE's per-head projections P_h as one bias-free Linear(H*r -> d); by default it starts at zero,
    so the block it ends is the identity at insertion (`memory.zero_init`)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)


class MemoryValues(nn.Module):
    """Base: holds the bank (unless shared) and reads it for retrieved slots [N, H, k]."""

    def __init__(self, bank_shape: tuple[int, int], owns_bank: bool):
        super().__init__()
        self.bank_shape = bank_shape
        self.bank = nn.Parameter(torch.empty(bank_shape)) if owns_bank else None

    def resolve_bank(self, shared_bank: torch.Tensor | None) -> torch.Tensor:
        bank = self.bank if self.bank is not None else shared_bank
        if bank is None:
            raise ValueError("this memory layer uses the model's shared bank, but none was passed")
        return bank


class HiveValues(MemoryValues):
    """HIVE: one latent bank U [n*n, r]; z_h = sum_t w_h,t U[I_h,t]; m = sum_h P_h^T z_h.

    Pooling happens in the latent space first; the per-head projections P_h [r, d] are one
    Linear(H*r -> d), so m = proj(concat_h z_h). Exact by linearity, and k times fewer projected rows.
    """

    def __init__(self, n_slots: int, heads: int, latent_dim: int, hidden_size: int, owns_bank: bool = True):
        super().__init__((n_slots, latent_dim), owns_bank)
        self.heads, self.latent_dim = heads, latent_dim
        self.proj = HiveProjection(heads * latent_dim, hidden_size)

    def forward(self, slots, weights, shared_bank=None, head_mask=None):
        if head_mask is not None:  # m_h z_h: the head's weights scaled
            weights = weights * head_mask.view(1, self.heads, 1).to(weights.dtype)
        bank, proj = self.resolve_bank(shared_bank), self.proj
        slots, weights = slots.flatten(0, 1), weights.flatten(0, 1)
        if type(proj) is HiveProjection and not (proj._forward_hooks or proj._forward_pre_hooks):
            return pool(bank, slots, weights, proj.weight)  # one op: on the CPU the latents are not kept
        return proj(pool(bank, slots, weights).view(-1, self.heads * self.latent_dim))  # LoRA, hooks


class PerHeadValues(MemoryValues):
    """Ablation: an independent table U_h [n*n, d_h] per head (stored as one [H*n*n, d_h] table),
    heads concatenated to d."""

    def __init__(self, n_slots: int, heads: int, head_dim: int, owns_bank: bool = True):
        super().__init__((heads * n_slots, head_dim), owns_bank)
        self.heads, self.head_dim, self.n_slots = heads, head_dim, n_slots

    def forward(self, slots, weights, shared_bank=None, head_mask=None):
        n_tokens = slots.shape[0]
        offsets = torch.arange(self.heads, device=slots.device).view(1, self.heads, 1) * self.n_slots
        out = pool(self.resolve_bank(shared_bank), (slots + offsets).flatten(0, 1), weights.flatten(0, 1))
        out = out.view(n_tokens, self.heads, self.head_dim)
        if head_mask is not None:
            out = out * head_mask.view(1, self.heads, 1).to(out.dtype)
        return out.flatten(1)


class SharedValues(MemoryValues):
    """Ablation (Memory-Layers style): one table [n*n, d] read by every head, heads summed.

    Summing the heads' pooled rows is one bag of H*k rows per token."""

    def __init__(self, n_slots: int, heads: int, hidden_size: int, owns_bank: bool = True):
        super().__init__((n_slots, hidden_size), owns_bank)
        self.heads = heads

    def forward(self, slots, weights, shared_bank=None, head_mask=None):
        if head_mask is not None:
            weights = weights * head_mask.view(1, self.heads, 1).to(weights.dtype)
        return pool(self.resolve_bank(shared_bank), slots.flatten(1), weights.flatten(1))


def build_values(kind: str, n_slots: int, heads: int, head_dim: int, latent_dim: int, hidden_size: int,
                 owns_bank: bool = True) -> MemoryValues:
    if kind == "hive":
        return HiveValues(n_slots, heads, latent_dim, hidden_size, owns_bank)
    if kind == "per-head":
        return PerHeadValues(n_slots, heads, head_dim, owns_bank)
    if kind == "shared":
        return SharedValues(n_slots, heads, hidden_size, owns_bank)
    raise ValueError(f"unknown memory values {kind!r}; valid: hive, per-head, shared")
