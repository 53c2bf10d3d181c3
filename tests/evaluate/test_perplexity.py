import math

import pytest
import torch

from midus.errors import UsageError
from midus.evaluate import document_perplexity, rolling_perplexity
from midus.evaluate.perplexity import rolling_windows
from midus.load import load_model


@pytest.fixture(scope="module")
def model_and_tokenizer(midus_folder):
    loaded = load_model(str(midus_folder))
    return loaded.model, loaded.tokenizer


def reference_rolling(model, ids: list[int], max_length: int, stride: int) -> float:
    """The strided recipe of the transformers docs, with the model's own loss: each window scores
    only the tokens no earlier window scored."""
    nll_sum, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length, len(ids))
        target_len = end - prev_end
        window = torch.tensor([ids[begin:end]])
        labels = window.clone()
        labels[:, :-target_len] = -100
        with torch.no_grad():
            loss = model(input_ids=window, labels=labels).loss
        scored = (labels[:, 1:] != -100).sum().item()
        nll_sum += loss.item() * scored
        count += scored
        prev_end = end
        if end == len(ids):
            break
    return math.exp(nll_sum / count), count


@pytest.mark.parametrize("max_length,stride", [(48, 20), (32, 32)])
def test_rolling_perplexity_equals_direct_computation(model_and_tokenizer, heldout_docs, max_length, stride):
    model, tokenizer = model_and_tokenizer
    docs = heldout_docs[:3]
    ids = [tokenizer.bos_token_id] + tokenizer("\n\n".join(docs), add_special_tokens=False)["input_ids"]
    expected, count = reference_rolling(model, ids, max_length, stride)
    got = rolling_perplexity(model, tokenizer, docs, max_length=max_length, stride=stride, batch_size=3, progress=False)
    assert got.tokens == count
    if stride < max_length:
        assert count == len(ids) - 1  # overlapping windows: every token but BOS scored exactly once
    assert got.value == pytest.approx(expected, rel=1e-4)
    assert (got.max_length, got.stride, got.documents) == (max_length, stride, 3)


def test_rolling_windows_score_every_token_once():
    for total, length, stride in [(100, 32, 8), (33, 32, 31), (5, 32, 4), (64, 16, 15)]:
        scored = [j for begin, end, first in rolling_windows(total, length, stride) for j in range(first, end)]
        assert scored == list(range(1, total))
        assert all(end - begin <= length for begin, end, _ in rolling_windows(total, length, stride))
    # no overlap: each window's first token lacks context and is skipped
    scored = [j for _, end, first in rolling_windows(64, 16, 16) for j in range(first, end)]
    assert scored == [j for j in range(1, 64) if j % 16]


def test_document_perplexity_equals_direct_computation(model_and_tokenizer, heldout_docs):
    model, tokenizer = model_and_tokenizer
    docs, max_length = heldout_docs[:7], 40
    per_doc = []
    for doc in docs:
        ids = torch.tensor([([tokenizer.bos_token_id] + tokenizer(doc, add_special_tokens=False)["input_ids"])[:max_length]])
        with torch.no_grad():
            per_doc.append(math.exp(model(input_ids=ids, labels=ids).loss.item()))
    got = document_perplexity(model, tokenizer, docs, max_length=max_length, batch_size=3, progress=False)
    assert got.value == pytest.approx(sum(per_doc) / len(per_doc), rel=1e-4)
    assert got.documents == 7 and got.tokens == 7 * (max_length - 1)  # every docstring is longer than 40 tokens


def test_default_length_is_capped_by_the_model_and_explicit_excess_is_an_error(model_and_tokenizer, heldout_docs):
    model, tokenizer = model_and_tokenizer
    positions = model.config.max_position_embeddings
    got = document_perplexity(model, tokenizer, heldout_docs[:2], progress=False)
    assert got.max_length == min(2048, positions)
    with pytest.raises(UsageError, match=f"exceeds the model's {positions} positions"):
        rolling_perplexity(model, tokenizer, heldout_docs[:2], max_length=positions + 1, progress=False)
    with pytest.raises(UsageError, match="stride"):
        rolling_perplexity(model, tokenizer, heldout_docs[:2], max_length=32, stride=64, progress=False)
