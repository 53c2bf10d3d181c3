"""Head masks remove exactly a head's contribution; the gradient estimate is the mask's derivative
and ranks heads like removal where one head matters."""

import pytest
import torch
from analysis_helpers import token_batches
from model_helpers import grow
from transformers import AutoModelForCausalLM

from midus.analysis import head_importance, head_masks, mean_loss
from midus.analysis.head_importance import spearman
from midus.analysis.probes import blocks, memory_blocks


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_removing_every_memory_head_gives_the_model_without_memory(grown, tiny_base):
    ids = token_batches()[0]
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    memory = memory_blocks(grown)
    assert [b.index for b in memory] == [2, 4]
    assert (logits(grown, ids) - logits(base, ids)).abs().max() > 1e-3, "the memory must matter in this test"
    with head_masks(memory, {b.index: torch.zeros(b.heads) for b in memory}):
        masked = logits(grown, ids)
    # P = 0 makes every memory block the identity: the base model, and the grown model with zero projections
    torch.testing.assert_close(masked, logits(base, ids), atol=1e-5, rtol=0)
    for block in memory:
        torch.nn.init.zeros_(block.layer.memory.values.proj.weight)
    torch.testing.assert_close(masked, logits(grown, ids), atol=0, rtol=0)


def test_removing_one_memory_head_zeroes_its_projection(grown):
    ids = token_batches()[0]
    block = memory_blocks(grown)[0]
    with head_masks([block], {block.index: torch.tensor([1.0, 0.0, 1.0, 1.0])}):
        masked = logits(grown, ids)
    r = block.layer.memory.values.latent_dim
    with torch.no_grad():
        block.layer.memory.values.proj.weight[:, r:2 * r] = 0  # P_1 = 0
    torch.testing.assert_close(masked, logits(grown, ids), atol=1e-6, rtol=0)
    assert block.layer.memory.head_mask is None, "the mask is removed on exit"


def test_removing_an_attention_head_zeroes_its_o_proj_columns(grown):
    ids = token_batches()[0]
    block = blocks(grown)[3]
    assert block.kind == "decoder"
    with head_masks([block], {block.index: torch.tensor([1.0, 1.0, 0.0, 1.0])}):
        masked = logits(grown, ids)
    d_h = block.head_dim
    with torch.no_grad():
        block.layer.self_attn.o_proj.weight[:, 2 * d_h:3 * d_h] = 0
    torch.testing.assert_close(masked, logits(grown, ids), atol=1e-6, rtol=0)
    assert not block.layer.self_attn.o_proj._forward_pre_hooks, "the hook is removed on exit"


def test_gradient_estimate_is_the_derivative_of_the_loss_in_the_mask(grown):
    """Finite differences in float64, for heads after which no retrieval runs: later top-k selections
    make the loss only piecewise smooth in an earlier mask."""
    model = grown.double()
    batches = token_batches(windows=2)
    result = head_importance(model, batches, removal=False, progress=False)
    eps = 1e-3  # the retrieval softmax runs in float32: smaller steps would difference its rounding
    for layer, head in ((4, 1), (4, 2), (5, 2)):  # two heads of the last memory block, one attention head
        block = blocks(model)[layer]
        losses = []
        for sign in (1, -1):
            mask = torch.ones(block.heads, dtype=torch.float64)
            mask[head] += sign * eps
            with head_masks([block], {layer: mask}):
                losses.append(mean_loss(model, batches))
        derivative = (losses[0] - losses[1]) / (2 * eps)
        assert result.blocks[layer].taylor[head] == pytest.approx(-derivative, rel=2e-3)
        assert result.blocks[layer].gradient[head] == pytest.approx(abs(derivative), rel=2e-3)


def test_gradient_ranks_heads_like_removal_when_one_head_matters(tiny_base):
    model = grow(tiny_base)
    memory = memory_blocks(model)
    r = memory[0].layer.memory.values.latent_dim
    batches = token_batches()
    weight = memory[0].layer.memory.values.proj.weight  # every P_h = 0 except head 1 of the first memory block,
    optimizer = torch.optim.Adam([weight], lr=0.05)    # trained a few steps so that it lowers the loss
    for _ in range(10):
        loss = sum(model(ids, labels=ids).loss for ids in batches)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            weight[:, :r] = 0
            weight[:, 2 * r:] = 0
    result = head_importance(model, batches, progress=False)
    rows = {b.layer: b for b in result.blocks}
    removal = torch.tensor([rows[b.index].removal for b in memory])
    gradient = torch.tensor([rows[b.index].gradient for b in memory])
    assert removal[0, 1] > 0.01, "the one head with a projection matters"
    assert removal.argmax() == gradient.argmax() == 1  # block 0, head 1
    others = torch.ones_like(removal, dtype=torch.bool)
    others[0, 1] = False
    assert removal[others].abs().max() < 1e-6 and gradient[others].abs().max() < 1e-6
    assert result.all_memory_removal == pytest.approx(rows[2].block_removal, abs=1e-6)
    assert result.all_memory_removal == pytest.approx(removal[0, 1].item(), abs=1e-6)


def test_report_covers_every_block_and_head(grown):
    result = head_importance(grown, token_batches(windows=2), progress=False)
    assert [(b.layer, b.kind, b.new) for b in result.blocks] == [
        (0, "decoder", False), (1, "decoder", False), (2, "memory", True), (3, "decoder", False),
        (4, "memory", True), (5, "decoder", False)]
    assert all(len(b.removal) == len(b.gradient) == len(b.taylor) == 4 for b in result.blocks)
    assert all(g >= 0 for b in result.blocks for g in b.gradient)
    assert result.tokens == 2 * 23
    for correlations in result.rank_correlation.values():
        assert set(correlations) == {"all", "memory", "attention"}
        assert all(rho is None or -1 <= rho <= 1 for rho in correlations.values())
    assert set(result.rank_correlation) == {"gradient_vs_abs_removal", "taylor_vs_removal"}


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [5, 5, 9]) == pytest.approx(1.0)  # ties share their average rank
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_dus_growth_marks_added_attention_heads(tiny_base):
    """LLaMA Pro copies end in a zeroed o_proj: their attention heads exist but contribute nothing."""
    model = grow(tiny_base, method="llama-pro")
    result = head_importance(model, token_batches(windows=2), progress=False)
    added = [b for b in result.blocks if b.new]
    assert [(b.layer, b.kind) for b in added] == [(2, "decoder"), (4, "decoder")]
    assert result.all_memory_removal is None and "memory" not in {b.kind for b in result.blocks}
    assert all(v == 0 for b in added for v in b.removal + b.gradient)
