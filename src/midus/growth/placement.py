"""Where inserted blocks go: each new block is inserted after a backbone block (its source)."""

from ..recipe import PLACEMENTS, RecipeError


def source_blocks(placement: str | list[int], num_layers: int, new_blocks: int) -> list[int]:
    """Source block index of every new block, in stack order.

    distributed:  after every (L/K)-th block, i = L/K-1, 2L/K-1, ... (LLaMA Pro's interleave)
    top-heavy:    after blocks L-K-1 ... L-2 (LESA's upper half)
    bottom-heavy: after blocks 0 ... K-1
    """
    L, K = num_layers, new_blocks
    if not 1 <= K < L:
        raise RecipeError(f"new_blocks={K} must be between 1 and {L - 1} for a base of {L} blocks")
    if isinstance(placement, list):
        if len(placement) != K:
            raise RecipeError(f"placement lists {len(placement)} source blocks but new_blocks is {K}")
        if bad := [i for i in placement if not 0 <= i < L]:
            raise RecipeError(f"placement: source blocks {bad} out of range; the base has blocks 0..{L - 1}")
        return sorted(placement)
    if placement == "distributed":
        return [(j + 1) * L // K - 1 for j in range(K)]
    if placement == "top-heavy":
        return list(range(L - K - 1, L - 1))
    if placement == "bottom-heavy":
        return list(range(K))
    raise RecipeError(f"placement: got {placement!r}; valid: {', '.join(PLACEMENTS)}, or a list of source block indices")


def insert_after(num_layers: int, sources: list[int]) -> list[tuple[int, bool]]:
    """The grown stack as (source block, is_new) pairs: each new block right after its source."""
    layout = []
    for i in range(num_layers):
        layout.append((i, False))
        layout.extend((i, True) for _ in range(sources.count(i)))
    return layout
