"""Paired tests: McNemar on items, a paired bootstrap on documents."""

import numpy as np
import pytest
from scipy.stats import binomtest

from midus.compare.stats import describe, paired_accuracy, paired_perplexity


def test_mcnemar_counts_the_discordant_items():
    a = [1, 1, 1, 1, 1, 1, 0, 0, 1, 0] * 6  # the method
    b = [1, 0, 0, 0, 0, 0, 0, 1, 1, 0] * 6  # the reference
    test = paired_accuracy("midus", "llama-pro", "arc", a, b)
    assert test.discordant == (30, 6) and test.n == 60
    assert test.p_value == pytest.approx(binomtest(30, 36, 0.5).pvalue)
    assert test.gap == pytest.approx(np.mean(a) - np.mean(b)) == pytest.approx(0.4)
    assert test.low < test.gap < test.high and test.low > 0
    assert test.beyond and "beyond noise" in describe(test)


def test_equal_answers_are_within_noise():
    a = [1, 0, 1, 1, 0] * 10
    test = paired_accuracy("midus", "llama-pro", "arc", a, list(a))
    assert (test.p_value, test.gap, test.low, test.high, test.discordant) == (1.0, 0.0, 0.0, 0.0, (0, 0))
    assert not test.beyond and "within noise" in describe(test)


def test_perplexity_gap_is_the_difference_of_wiki_ppls():
    rng = np.random.default_rng(0)
    ref = rng.uniform(2.0, 3.5, 200)
    better = ref - 0.05 + rng.normal(0, 0.01, 200)  # lower NLL on every document
    test = paired_perplexity("midus", "llama-pro", list(better), list(ref))
    wiki = lambda nll: np.mean(np.exp(nll))  # noqa: E731 - the report's Wiki-PPL
    assert test.value == pytest.approx(wiki(better)) and test.reference_value == pytest.approx(wiki(ref))
    assert test.gap == pytest.approx(wiki(better) - wiki(ref)) and test.gap < 0
    assert test.high < 0 and test.p_value < 1e-3 and test.beyond


def test_unpaired_values_are_refused():
    with pytest.raises(ValueError, match="3 and 2 values cannot be paired"):
        paired_accuracy("a", "b", "arc", [1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="non-finite"):
        paired_perplexity("a", "b", [1.0, float("nan")], [1.0, 2.0])
