import pytest
import torch

from midus.model.values import HiveValues, PerHeadValues, SharedValues, gather_pool, pool


def retrieval(n_tokens, heads, n_slots, k, seed=0):
    generator = torch.Generator().manual_seed(seed)
    slots = torch.stack([torch.randperm(n_slots, generator=generator)[:k] for _ in range(n_tokens * heads)])
    weights = torch.rand(n_tokens * heads, k, generator=generator, dtype=torch.float64).softmax(-1)
    return slots.view(n_tokens, heads, k), weights.view(n_tokens, heads, k)


def test_hive_pool_then_project_equals_project_every_row():
    torch.manual_seed(0)
    heads, latent, hidden, n_slots, k = 4, 8, 24, 64, 5
    values = HiveValues(n_slots, heads, latent, hidden).double()
    torch.nn.init.normal_(values.bank)
    torch.nn.init.normal_(values.proj.weight)
    slots, weights = retrieval(11, heads, n_slots, k)

    out = values(slots, weights)

    # reference: realise every retrieved row through its head's projection P_h, then pool
    P = values.proj.weight.T.view(heads, latent, hidden)  # P_h in R^{r x d}
    rows = values.bank[slots]  # [N, H, k, r]
    projected = torch.einsum("nhkr,hrd->nhkd", rows, P)
    reference = (projected * weights.unsqueeze(-1)).sum(dim=(1, 2))
    torch.testing.assert_close(out, reference)


@pytest.mark.parametrize("kernels", ["1", "0"])
@pytest.mark.parametrize("head_mask", [None, torch.tensor([1.0, 0.0, 0.5, 2.0])])
def test_hive_gradients_equal_autograd_through_the_gather_and_keep_no_latents(kernels, head_mask, monkeypatch):
    """HIVE's pooling and projection as one op (on the CPU kernels: the backward pools the latents again
    instead of keeping them) against autograd through the gather: output and every gradient, mask included."""
    monkeypatch.setenv("MIDUS_CPU_KERNELS", kernels)
    torch.manual_seed(3)
    heads, latent, hidden, n_slots, k, n_tokens = 4, 8, 24, 64, 5, 11
    values = HiveValues(n_slots, heads, latent, hidden).double()
    torch.nn.init.normal_(values.bank)
    torch.nn.init.normal_(values.proj.weight)
    slots, weights = retrieval(n_tokens, heads, n_slots, k)
    weights.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        out = values(slots, weights, head_mask=head_mask)
    grads = torch.autograd.grad(out.square().sum(), (values.bank, values.proj.weight, weights))

    mask = torch.ones(heads, dtype=torch.float64) if head_mask is None else head_mask.double()
    latents = gather_pool(values.bank, slots, weights) * mask[:, None]  # z_h: [N, H, r]
    reference = latents.flatten(1) @ values.proj.weight.T
    expected = torch.autograd.grad(reference.square().sum(), (values.bank, values.proj.weight, weights))
    torch.testing.assert_close(out, reference)
    for mine, theirs in zip(grads, expected):
        torch.testing.assert_close(mine, theirs)
    if kernels == "1":
        assert (n_tokens * heads, latent) not in saved and (n_tokens, heads * latent) not in saved


def test_hive_under_autocast_takes_the_gradients_of_the_unfused_path(monkeypatch):
    """bfloat16 autocast on the CPU: the projection in bf16 within the one op; its gradients are the plain
    path's (pooling, then an autocast Linear)."""
    torch.manual_seed(4)
    values = HiveValues(64, 4, 8, 24)
    torch.nn.init.normal_(values.bank)
    torch.nn.init.normal_(values.proj.weight)
    slots, weights = retrieval(11, 4, 64, 5)
    weights = weights.float().requires_grad_()
    grads = {}
    for kernels in ("1", "0"):
        monkeypatch.setenv("MIDUS_CPU_KERNELS", kernels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = values(slots, weights)
        assert out.dtype == torch.bfloat16
        grads[kernels] = torch.autograd.grad(out.float().square().sum(), (values.bank, values.proj.weight, weights))
    for fused, plain in zip(grads["1"], grads["0"]):
        assert fused.dtype == plain.dtype == torch.float32
        torch.testing.assert_close(fused, plain, atol=2e-2, rtol=2e-2)


def test_hive_calls_a_wrapped_projection():
    """A projection that is not the plain Linear (LoRA, a forward hook) is called as a module."""
    values = HiveValues(16, 2, 4, 6).double()
    torch.nn.init.normal_(values.bank)
    slots, weights = retrieval(3, 2, 16, 2, seed=6)
    plain = values(slots, weights)
    calls = []
    values.proj.register_forward_hook(lambda module, args, out: calls.append(1) or 2 * out)
    torch.testing.assert_close(values(slots, weights), 2 * plain)
    assert calls == [1]


def test_per_head_tables_are_independent_and_concatenated():
    heads, head_dim, n_slots, k = 3, 4, 16, 2
    values = PerHeadValues(n_slots, heads, head_dim).double()
    torch.nn.init.normal_(values.bank)
    slots, weights = retrieval(5, heads, n_slots, k, seed=1)
    out = values(slots, weights)
    tables = values.bank.view(heads, n_slots, head_dim)
    reference = torch.cat([(tables[h][slots[:, h]] * weights[:, h, :, None]).sum(1) for h in range(heads)], dim=-1)
    torch.testing.assert_close(out, reference)


def test_shared_table_sums_heads():
    heads, hidden, n_slots, k = 3, 6, 16, 2
    values = SharedValues(n_slots, heads, hidden).double()
    torch.nn.init.normal_(values.bank)
    slots, weights = retrieval(5, heads, n_slots, k, seed=2)
    reference = sum((values.bank[slots[:, h]] * weights[:, h, :, None]).sum(1) for h in range(heads))
    torch.testing.assert_close(values(slots, weights), reference)


@pytest.mark.parametrize("kernels", ["1", "0"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_embedding_bag_and_gather_fallback_agree(dtype, kernels, monkeypatch):
    """The fast pool (embedding_bag forward; on the CPU in float32/64, with gradients, the kernel's
    backward unless MIDUS_CPU_KERNELS=0) against the plain gather, the reference: outputs and the
    gradients of the bank and the weights."""
    monkeypatch.setenv("MIDUS_CPU_KERNELS", kernels)
    bank = torch.randn(50, 8, dtype=dtype, requires_grad=True)
    slots, weights = retrieval(7, 1, 50, 4, seed=3)
    slots = torch.cat([slots.flatten(0, 1), torch.tensor([[3, 3, 3, 3], [3, 9, 3, 9]])])  # repeated slots too
    weights = torch.cat([weights.flatten(0, 1), torch.rand(2, 4, dtype=torch.float64)]).to(dtype).requires_grad_()
    fast, slow = pool(bank, slots, weights), gather_pool(bank, slots, weights)
    tolerance = {"atol": 5e-2, "rtol": 1e-2} if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(fast, slow, **tolerance)
    grad_fast = torch.autograd.grad(fast.float().square().sum(), (bank, weights))
    grad_slow = torch.autograd.grad(slow.float().square().sum(), (bank, weights))
    for fast_grad, slow_grad in zip(grad_fast, grad_slow):
        torch.testing.assert_close(fast_grad, slow_grad, **tolerance)


def test_pool_backward_with_a_frozen_bank_gives_the_weights_gradient_only():
    bank = torch.randn(30, 5, dtype=torch.float64)
    slots, weights = retrieval(4, 1, 30, 3, seed=5)
    slots, weights = slots.flatten(0, 1), weights.flatten(0, 1).requires_grad_()
    (grad,) = torch.autograd.grad(pool(bank, slots, weights).sum(), weights)
    torch.testing.assert_close(grad, bank[slots].sum(-1))


def test_shared_bank_is_required_when_not_owned():
    values = HiveValues(16, 2, 4, 8, owns_bank=False)
    slots, weights = retrieval(3, 2, 16, 2)
    with pytest.raises(ValueError, match="shared bank"):
        values(slots, weights.float())


def test_pool_falls_back_to_gather_where_embedding_bag_is_missing(monkeypatch):
    import midus.model.values as values_module

    calls = []
    # a device such as mps: neither embedding_bag nor the CPU kernels
    monkeypatch.setattr(values_module, "embedding_bag_supported", lambda device, dtype: calls.append(device) or False)
    monkeypatch.setattr(values_module, "kernels_support", lambda tensor: False)
    monkeypatch.setattr(values_module.F, "embedding_bag", lambda *a, **k: pytest.fail("embedding_bag used"))
    bank = torch.randn(20, 4, dtype=torch.float64)
    slots, weights = retrieval(3, 1, 20, 2, seed=4)
    out = values_module.pool(bank, slots.flatten(0, 1), weights.flatten(0, 1))
    torch.testing.assert_close(out, (bank[slots.flatten(0, 1)] * weights.flatten(0, 1)[..., None]).sum(1))
    assert calls == ["cpu"]


def test_embedding_bag_is_used_on_cpu_and_cuda_only():
    from midus.model.values import embedding_bag_supported

    assert embedding_bag_supported("cpu", torch.bfloat16) and embedding_bag_supported("cuda", torch.float16)
    assert not embedding_bag_supported("mps", torch.float32)
    assert not embedding_bag_supported("cpu", torch.int64)


def test_float32_backward_only_where_cuda_bf16_lacks_the_kernel():
    """pytorch#185808: before torch 2.13 the weighted embedding_bag's CUDA backward has no bfloat16."""
    from midus.model.values import CUDA_BF16_BACKWARD, float32_backward

    assert CUDA_BF16_BACKWARD == (tuple(map(int, torch.__version__.split(".")[:2])) >= (2, 13))
    assert float32_backward("cuda", torch.bfloat16, backward=True, cuda_bf16_backward=False)
    assert not float32_backward("cuda", torch.bfloat16, backward=True, cuda_bf16_backward=True)
    assert not float32_backward("cuda", torch.bfloat16, backward=False, cuda_bf16_backward=False)  # inference
    assert not float32_backward("cuda", torch.float16, backward=True, cuda_bf16_backward=False)
    assert not float32_backward("cpu", torch.bfloat16, backward=True, cuda_bf16_backward=False)


def bf16_pool_against_float64_reference(device, monkeypatch=None):
    """pool in bfloat16 with gradients (bank and weights) against the float64 gather reference."""
    import midus.model.values as values_module

    if monkeypatch is not None:  # the float32 route, taken on the CPU as it is on CUDA before torch 2.13
        routes = []
        monkeypatch.setattr(values_module, "float32_backward", lambda *args: routes.append(args) or True)
    bank64 = torch.randn(40, 8, dtype=torch.float64)
    slots, weights64 = retrieval(6, 1, 40, 4, seed=7)
    slots, weights64 = slots.flatten(0, 1).to(device), weights64.flatten(0, 1)
    bank = bank64.to(device, torch.bfloat16).requires_grad_()
    weights = weights64.to(device, torch.bfloat16).requires_grad_()
    out = values_module.pool(bank, slots, weights)
    grads = torch.autograd.grad(out.float().square().sum(), (bank, weights))
    reference_bank = bank.detach().double().requires_grad_()
    reference_weights = weights.detach().double().requires_grad_()
    reference = gather_pool(reference_bank, slots, reference_weights)
    reference_grads = torch.autograd.grad(reference.square().sum(), (reference_bank, reference_weights))
    assert out.dtype == torch.bfloat16 and all(grad.dtype == torch.bfloat16 for grad in grads)
    torch.testing.assert_close(out.double(), reference, atol=2e-2, rtol=1e-2)
    for grad, reference_grad in zip(grads, reference_grads):
        torch.testing.assert_close(grad.double(), reference_grad, atol=5e-2, rtol=2e-2)
    if monkeypatch is not None:
        assert routes == [(device.type if isinstance(device, torch.device) else device, torch.bfloat16, True)]


def test_float32_route_of_the_bf16_pool_matches_the_reference(monkeypatch):
    bf16_pool_against_float64_reference("cpu", monkeypatch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_pool_trains_on_cuda_with_this_torch():
    """On this torch's own CUDA route (embedding_bag from 2.13, float32 before): no NotImplementedError."""
    bf16_pool_against_float64_reference(torch.device("cuda"))
