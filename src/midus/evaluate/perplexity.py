"""Two named perplexities.

rolling   Token-level perplexity of one text stream (the documents joined by a blank line), WikiText
          style: windows of `max_length` tokens that advance by `stride`; each window scores only the
          tokens the previous windows did not, so with stride < max_length every token is scored once,
          with at least `max_length - stride` tokens of context (fewer only at the start). With
          stride == max_length (no overlap) a window's first token has no context and is not scored,
          as in the transformers documentation's recipe. Default stride: half the window.
              PPL = exp( sum_t NLL_t / T )
document  The paper's Wiki-PPL: every document on its own, truncated to `max_length` tokens,
              PPL = mean_d exp( mean_{t in d} NLL_t )
          (a mean of per-document perplexities, so short, hard documents weigh as much as long ones).

A beginning-of-sequence token, when the tokenizer has one, starts the stream and every document, so
the first text token is scored too. NLL_t = -log p(x_t | x_<t), computed in float32.
"""

import math
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from ..errors import UsageError
from ..load import max_positions

DEFAULT_MAX_LENGTH = 2048  # the paper's truncation
KINDS = ("rolling", "document")


class Perplexity(BaseModel):
    kind: str  # rolling | document
    value: float  # the perplexity
    mean_nll: float  # rolling: mean NLL per token; document: mean over documents of their mean NLL
    tokens: int  # scored tokens
    documents: int  # documents that contributed
    max_length: int  # window (rolling) or truncation (document) in tokens, BOS included
    stride: int | None  # rolling only
    per_document: list[float] = Field([], exclude=True, description="document: each scored document's mean NLL, "
                                                                     "in the input order (paired tests)")


def check_length(model, max_length: int | None) -> int:
    """`max_length` if the model has room for it; None means min(2048, the model's positions)."""
    positions = max_positions(model)
    if max_length is None:
        return min(DEFAULT_MAX_LENGTH, positions) if positions else DEFAULT_MAX_LENGTH
    if max_length < 2:
        raise UsageError(f"max length {max_length}: must be at least 2 tokens")
    if positions and max_length > positions:
        raise UsageError(f"max length {max_length} exceeds the model's {positions} positions (max_position_embeddings)")
    return max_length


def token_nll(model, sequences: list[list[int]], pad_id: int) -> list[torch.Tensor]:
    """NLL of every token after the first, per sequence: out[i][j] = -log p(seq[j+1] | seq[:j+1])."""
    device = next(model.parameters()).device
    longest = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:].to(device), reduction="none")
    return [nll[i, : len(seq) - 1].cpu() for i, seq in enumerate(sequences)]


def _prefix(tokenizer, add_bos: bool) -> list[int]:
    return [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []


def _pad_id(tokenizer) -> int:
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if token_id is not None:
            return token_id


def rolling_windows(total: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored) over a stream of `total` tokens: the window holds tokens
    [begin, end) and scores targets [first_scored, end); token 0 is context only."""
    windows, scored_until, begin = [], 1, 0
    while True:
        end = min(begin + max_length, total)
        windows.append((begin, end, max(scored_until, begin + 1)))  # a window's first token has no context
        scored_until = end
        if end == total:
            return windows
        begin += stride


def rolling_perplexity(model, tokenizer, documents: list[str], *, max_length: int | None = None,
                       stride: int | None = None, batch_size: int = 4, add_bos: bool = True, separator: str = "\n\n",
                       progress: bool = True) -> Perplexity:
    max_length = check_length(model, max_length)
    stride = stride or max(1, max_length // 2)
    if not 1 <= stride <= max_length:
        raise UsageError(f"stride {stride}: must be between 1 and the window length {max_length}")
    stream = _prefix(tokenizer, add_bos) + tokenizer(separator.join(documents), add_special_tokens=False)["input_ids"]
    if len(stream) < 2:
        raise UsageError("the text is too short to score: fewer than 2 tokens")
    windows = rolling_windows(len(stream), max_length, stride)
    total_nll, count = 0.0, 0
    bar = tqdm(total=len(stream) - 1, desc="rolling perplexity", unit="tok", disable=not progress)
    for start in range(0, len(windows), batch_size):
        batch = windows[start: start + batch_size]
        nlls = token_nll(model, [stream[b:e] for b, e, _ in batch], _pad_id(tokenizer))
        for (begin, _, first), nll in zip(batch, nlls):
            scored = nll[first - begin - 1:]  # targets first..end-1 sit at positions first-1-begin.. of nll
            total_nll += scored.double().sum().item()
            count += scored.numel()
            bar.update(scored.numel())
    bar.close()
    mean = total_nll / count
    return Perplexity(kind="rolling", value=math.exp(mean), mean_nll=mean, tokens=count, documents=len(documents),
                      max_length=max_length, stride=stride)


def document_perplexity(model, tokenizer, documents: list[str], *, max_length: int | None = None,
                        batch_size: int = 4, add_bos: bool = True, progress: bool = True) -> Perplexity:
    max_length = check_length(model, max_length)
    prefix = _prefix(tokenizer, add_bos)
    encoded = [(prefix + ids)[:max_length] for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]]
    encoded = [ids for ids in encoded if len(ids) >= 2]
    if not encoded:
        raise UsageError("no document has 2 tokens or more to score")
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
    mean_nlls, tokens = [0.0] * len(encoded), 0
    for start in tqdm(range(0, len(order), batch_size), desc="document perplexity", unit="batch", disable=not progress):
        indices = order[start: start + batch_size]
        for i, nll in zip(indices, token_nll(model, [encoded[i] for i in indices], _pad_id(tokenizer))):
            mean_nlls[i] = nll.double().mean().item()
            tokens += nll.numel()
    value = sum(math.exp(m) for m in mean_nlls) / len(mean_nlls)
    return Perplexity(kind="document", value=value, mean_nll=sum(mean_nlls) / len(mean_nlls), tokens=tokens,
                      documents=len(mean_nlls), max_length=max_length, stride=None, per_document=mean_nlls)


def perplexities(model, tokenizer, documents: list[str], kinds=KINDS, **options) -> dict[str, Perplexity]:
    """Both (or the chosen) perplexities of `documents`; `options`: max_length, stride, batch_size."""
    out = {}
    if "rolling" in kinds:
        out["rolling"] = rolling_perplexity(model, tokenizer, documents, **options)
    if "document" in kinds:
        options = {k: v for k, v in options.items() if k not in ("stride", "separator")}
        out["document"] = document_perplexity(model, tokenizer, documents, **options)
    return out
