"""Paired tests of a method against the reference, on the same items and the same documents.

accuracy    per item, 1 or 0 for both models: the gap is the difference of the accuracies; its 95%
            interval is a paired bootstrap over items; its p-value McNemar's exact test on the items
            only one of the two got right (binomial, p = 1/2).
perplexity  per held-out document, each model's perplexity of it: the gap is the difference of the
            Wiki-PPLs (the mean of per-document perplexities); its 95% interval and two-sided p-value
            are a paired bootstrap over documents.

A gap is called beyond noise when p < 0.05 (no correction for the number of tests: the report
lists every test, so the reader can count).
"""

import numpy as np
from pydantic import BaseModel, Field
from scipy.stats import binomtest

BOOTSTRAP = 10_000
ALPHA = 0.05


class PairedTest(BaseModel):
    method: str
    reference: str
    figure: str = Field(description="wiki_ppl or a task name")
    stage: str = Field("after CPT", description="after CPT | before CPT")
    n: int = Field(description="items or documents in the pairs")
    value: float
    reference_value: float
    gap: float = Field(description="value - reference_value")
    low: float = Field(description="95% paired-bootstrap interval of the gap")
    high: float
    p_value: float
    test: str = Field(description="McNemar exact | paired bootstrap")
    discordant: tuple[int, int] | None = Field(None, description="accuracy: items only the method / only the "
                                                                 "reference got right")

    @property
    def beyond(self) -> bool:
        return self.p_value < ALPHA


def bootstrap_means(differences: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(differences), size=(BOOTSTRAP, len(differences)))
    return differences[picks].mean(axis=1)


def interval(means: np.ndarray) -> tuple[float, float]:
    low, high = np.quantile(means, [ALPHA / 2, 1 - ALPHA / 2])
    return float(low), float(high)


def paired_accuracy(method: str, reference: str, figure: str, a: list[float], b: list[float],
                    stage: str = "after CPT") -> PairedTest:
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    check_pairs(figure, x, y)
    only_a, only_b = int(((x > 0.5) & (y < 0.5)).sum()), int(((x < 0.5) & (y > 0.5)).sum())
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    low, high = interval(bootstrap_means(x - y))
    return PairedTest(method=method, reference=reference, figure=figure, stage=stage, n=len(x), value=float(x.mean()),
                      reference_value=float(y.mean()), gap=float(x.mean() - y.mean()), low=low, high=high,
                      p_value=float(p), test="McNemar exact", discordant=(only_a, only_b))


def paired_perplexity(method: str, reference: str, nll_a: list[float], nll_b: list[float],
                      stage: str = "after CPT") -> PairedTest:
    """From each document's mean NLL under either model."""
    x, y = np.exp(np.asarray(nll_a, dtype=float)), np.exp(np.asarray(nll_b, dtype=float))
    check_pairs("wiki_ppl", x, y)
    differences = x - y
    means = bootstrap_means(differences)
    gap = float(differences.mean())
    # two-sided: how often the resampled gap, centred on zero, is at least as far from zero as the gap
    p = float(min(1.0, (np.abs(means - gap) >= abs(gap)).mean() + 1 / BOOTSTRAP)) if gap else 1.0
    low, high = interval(means)
    return PairedTest(method=method, reference=reference, figure="wiki_ppl", stage=stage, n=len(x),
                      value=float(x.mean()), reference_value=float(y.mean()), gap=gap, low=low, high=high, p_value=p,
                      test="paired bootstrap")


def check_pairs(figure: str, x: np.ndarray, y: np.ndarray) -> None:
    if len(x) != len(y) or not len(x):
        raise ValueError(f"{figure}: {len(x)} and {len(y)} values cannot be paired")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError(f"{figure}: non-finite values cannot be tested")


def describe(test: PairedTest, label=str) -> str:
    """`MIDUS local_piqa −1.20 pts (95% CI −3.4 to +1.0, McNemar p 0.31): within noise`."""
    if test.figure == "wiki_ppl":
        gap = f"{test.gap:+.2f} ({test.low:+.2f} to {test.high:+.2f})"
    else:
        gap = f"{100 * test.gap:+.2f} pts ({100 * test.low:+.2f} to {100 * test.high:+.2f})"
    p = format_p(test.p_value)
    verdict = "beyond noise" if test.beyond else "within noise"
    return f"{label(test.method)} {test.figure} {gap}, {test.test} p {p}, n {test.n}: {verdict}"


def format_p(p: float) -> str:
    """The bootstrap cannot resolve p below 1/BOOTSTRAP: such a p is shown as that bound."""
    return f"{p:.2g}" if p > 1 / BOOTSTRAP else f"≤ {1 / BOOTSTRAP:.0e}"
