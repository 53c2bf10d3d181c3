"""Fixed retrieval: replayed retrieval reproduces the model, the identity permutation changes
nothing, permuted projections are the head blocks of P moved as stated; value retraining runs."""

import pytest
import torch
from analysis_helpers import token_batches

from midus.analysis import captured_retrieval, fixed_retrieval_analysis, head_importance, mean_loss, replayed_retrieval
from midus.analysis.fixed_retrieval import derangement, realised_weight, variant_specs
from midus.analysis.probes import memory_blocks
from midus.analysis.value_retraining import retrain_values


def test_replayed_retrieval_reproduces_the_recorded_forward(grown):
    ids = token_batches()[0]
    memory = memory_blocks(grown)
    with torch.no_grad(), captured_retrieval(memory) as recorded:
        expected = grown(ids).logits
    assert set(recorded) == {2, 4} and recorded[2][0].shape == (ids.numel(), 4, 4)
    with torch.no_grad():
        for block in memory:  # other keys: a different retrieval, unless it is replayed
            block.layer.memory.retrieval.keys.copy_(torch.randn_like(block.layer.memory.retrieval.keys))
        assert (grown(ids).logits - expected).abs().max() > 1e-4
        with replayed_retrieval(memory, dict(recorded)):
            torch.testing.assert_close(grown(ids).logits, expected, atol=0, rtol=0)


def test_identity_permutation_leaves_the_loss_unchanged(grown):
    batches = token_batches()
    result = fixed_retrieval_analysis(grown, batches, permutations=2, progress=False)
    assert result.baseline_loss == pytest.approx(mean_loss(grown, batches), abs=1e-6)
    assert [b.layer for b in result.blocks] == [2, 4]
    for block in result.blocks:
        names = [v.name for v in block.variants]
        assert names == ["identity", "shift-1", "shift-2", "random-1", "random-2", "shared-mean", "zero"]
        identity = block.variants[0]
        assert identity.permutation == [0, 1, 2, 3]
        assert abs(identity.delta) < 1e-6
        assert any(abs(v.delta) > 1e-4 for v in block.variants[1:]), "changing the projections must change the loss"
    # the last memory block has no memory block after it: its `zero` variant is removing all its heads
    removal = head_importance(grown, batches, progress=False)
    zero = next(v for v in result.blocks[-1].variants if v.name == "zero")
    assert zero.delta == pytest.approx(removal.blocks[4].block_removal, abs=1e-6)


def test_realised_weight_moves_head_blocks():
    d, heads, r = 5, 3, 2
    weight = torch.randn(d, heads * r)
    z = torch.randn(heads, r)
    P = [weight[:, h * r:(h + 1) * r] for h in range(heads)]  # P_h^T
    permutation = [2, 0, 1]
    permuted = realised_weight(weight, heads, "random", permutation) @ z.flatten()
    torch.testing.assert_close(permuted, sum(P[permutation[h]] @ z[h] for h in range(heads)))
    shared = realised_weight(weight, heads, "shared", None) @ z.flatten()
    torch.testing.assert_close(shared, sum(sum(P) / heads @ z[h] for h in range(heads)))
    assert not realised_weight(weight, heads, "zero", None).any()
    torch.testing.assert_close(realised_weight(weight, heads, "identity", [0, 1, 2]), weight)


def test_variants_and_derangements():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        perm = derangement(4, generator)
        assert sorted(perm) == [0, 1, 2, 3] and all(p != h for h, p in enumerate(perm))
    assert [name for name, _, _ in variant_specs(1, 3, 0)] == ["identity", "shared-mean", "zero"]
    assert [name for name, _, _ in variant_specs(2, 1, 0)] == ["identity", "shift-1", "random-1", "shared-mean", "zero"]


def test_value_retraining_fits_and_scores_both_maps(grown):
    batches = token_batches(windows=6, seq_len=32)
    result = retrain_values(grown, batches[:2], batches[2:], steps=40, lr=1e-2, progress=False)
    assert result.fit_windows == 4 and result.heldout_windows == 2
    assert [b.layer for b in result.blocks] == [2, 4]
    for block in result.blocks:
        fits = {fit.name: fit for fit in block.fits}
        assert set(fits) == {"values", "ffn"}
        values, ffn = fits["values"], fits["ffn"]
        assert values.parameters == 8 * 8 * 16 + 4 * 16 * 64  # fresh bank n^2 r + projections H r d
        assert abs(ffn.parameters - values.parameters) <= (64 + 64) / 2  # equal up to rounding the width
        assert values.train_relative_mse < 1 and ffn.train_relative_mse < 1  # both learn something
        assert values.loss - values.delta == pytest.approx(block.model_loss) == ffn.loss - ffn.delta
        if block.zero_loss - block.model_loss > 1e-4:
            assert values.recovered == pytest.approx((block.zero_loss - values.loss) / (block.zero_loss - block.model_loss))
