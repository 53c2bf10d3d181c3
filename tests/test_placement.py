"""Placement policies: where K new blocks go in a base of L blocks (each after its source block)."""

import pytest

from midus.recipe import RecipeError
from midus.growth.placement import insert_after, source_blocks


@pytest.mark.parametrize("L", [16, 32])
@pytest.mark.parametrize("K", [4, 8, 16])
def test_policy_formulas(L, K):
    if K >= L:
        for policy in ("distributed", "top-heavy", "bottom-heavy"):
            with pytest.raises(RecipeError, match=f"new_blocks={K} must be between 1 and {L - 1}"):
                source_blocks(policy, L, K)
        return
    step = L // K
    assert source_blocks("distributed", L, K) == [step - 1 + j * step for j in range(K)]
    assert source_blocks("top-heavy", L, K) == [L - K - 1 + j for j in range(K)]
    assert source_blocks("bottom-heavy", L, K) == list(range(K))
    for policy in ("distributed", "top-heavy", "bottom-heavy"):
        sources = source_blocks(policy, L, K)
        assert len(sources) == K and all(0 <= i < L for i in sources)
        layout = insert_after(L, sources)
        assert len(layout) == L + K
        assert [s for s, new in layout if not new] == list(range(L)), "the backbone keeps its order"
        for j, (source, new) in enumerate(layout):
            if new:  # right after its source (or after another new block of the same source)
                assert layout[j - 1][0] == source


def test_paper_positions():
    assert source_blocks("top-heavy", 32, 16) == list(range(15, 31))  # LESA's 8B: after blocks 15..30
    assert source_blocks("distributed", 16, 8) == [1, 3, 5, 7, 9, 11, 13, 15]  # LLaMA Pro's interleave


def test_explicit_lists():
    assert source_blocks([5, 0, 5], 8, 3) == [0, 5, 5]
    assert insert_after(3, [0, 0]) == [(0, False), (0, True), (0, True), (1, False), (2, False)]
    with pytest.raises(RecipeError, match=r"source blocks \[8\] out of range; the base has blocks 0..7"):
        source_blocks([1, 8], 8, 2)
    with pytest.raises(RecipeError, match="lists 1 source blocks but new_blocks is 2"):
        source_blocks([1], 8, 2)
