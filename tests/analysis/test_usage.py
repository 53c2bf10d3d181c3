"""Memory usage statistics: equal to a hand computation on a tiny retrieval, within their bounds on
a grown model, and available for pkm blocks too."""

import math

import pytest
import torch
from analysis_helpers import token_batches
from model_helpers import grow

from midus.analysis import UsageCounter, memory_usage
from midus.analysis.probes import Block


def test_usage_equals_hand_computation():
    counter = UsageCounter(heads=2, slots=4, topk=2)
    slots = torch.tensor([[[0, 1], [2, 3]],    # token 0: head 0 reads slots 0, 1; head 1 reads 2, 3
                          [[0, 2], [3, 2]]])   # token 1: head 0 reads 0, 2; head 1 reads 3, 2
    weights = torch.tensor([[[0.75, 0.25], [0.9, 0.1]],
                            [[0.5, 0.5], [0.6, 0.4]]])
    counter.add(slots, weights)
    result = counter.result(Block(7, "memory", True, 6, None, 2, 8))
    head0, head1 = result.heads
    # head 0: counts [2, 1, 1, 0], p = [1/2, 1/4, 1/4, 0]; head 1: counts [0, 0, 2, 2]
    assert head0.share_used == 0.75 and head1.share_used == 0.5
    assert head0.entropy == pytest.approx(1.5 * math.log(2)) and head1.entropy == pytest.approx(math.log(2))
    assert head0.normalized_entropy == pytest.approx(0.75) and head1.normalized_entropy == pytest.approx(0.5)
    assert head0.effective_slots == pytest.approx(2 ** 1.5)
    assert head0.mean_max_weight == pytest.approx(0.625) and head1.mean_max_weight == pytest.approx(0.75)

    def h(*p):
        return -sum(x * math.log(x) for x in p)

    assert head0.weight_entropy == pytest.approx((h(0.75, 0.25) + h(0.5, 0.5)) / 2)
    assert head1.normalized_weight_entropy == pytest.approx((h(0.9, 0.1) + h(0.6, 0.4)) / 2 / math.log(2))
    # used sets {0, 1, 2} and {2, 3}: intersection 1, union 4
    assert result.jaccard == [[1.0, 0.25], [0.25, 1.0]] and result.mean_jaccard == 0.25
    assert result.share_used_any_head == 1.0
    assert result.count_histogram == {"0": 3 / 8, "1": 2 / 8, "2-3": 3 / 8}  # of the 8 (head, slot) counts
    assert result.max_weight_histogram[12] == 0.25 and sum(result.max_weight_histogram) == pytest.approx(1)  # 0.625 bin
    assert (result.layer, result.label, result.tokens, result.slots, result.topk) == (7, "7 M*", 2, 4, 2)


def test_usage_stays_within_bounds(grown):
    batches = token_batches(windows=4, seq_len=32)
    result = memory_usage(grown, batches, progress=False)
    assert result.tokens == 4 * 32
    assert [b.layer for b in result.blocks] == [2, 4]
    for block in result.blocks:
        assert block.slots == 64 and block.topk == 4 and block.tokens == 128 and len(block.heads) == 4
        for head in block.heads:
            assert 0 < head.share_used <= 1
            assert 0 <= head.entropy <= math.log(block.slots) + 1e-9
            assert 0 <= head.normalized_entropy <= 1 + 1e-9
            assert 1 / block.topk - 1e-9 <= head.mean_max_weight <= 1
            assert 0 <= head.weight_entropy <= math.log(block.topk) + 1e-9
            assert 0 <= head.normalized_weight_entropy <= 1 + 1e-9
        jaccard = torch.tensor(block.jaccard)
        assert ((0 <= jaccard) & (jaccard <= 1)).all() and torch.equal(jaccard, jaccard.T)
        assert torch.equal(jaccard.diagonal(), torch.ones(4))
        assert 0 <= block.mean_jaccard <= 1
        assert max(h.share_used for h in block.heads) <= block.share_used_any_head <= 1
        assert sum(block.count_histogram.values()) == pytest.approx(1)
        assert sum(block.max_weight_histogram) == pytest.approx(1)


def test_usage_of_pkm_blocks(tiny_base):
    model = grow(tiny_base, "pkm", memory={"latent_dim": 16, "pkm_key_dim": 8})
    result = memory_usage(model, token_batches(windows=2), progress=False)
    assert [(b.layer, b.kind, len(b.heads)) for b in result.blocks] == [(2, "pkm", 2), (4, "pkm", 2)]
