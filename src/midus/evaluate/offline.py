"""Offline lm-eval tasks built from held-out text, so zero-shot evaluation needs no network.

`midus_heldout_mc` (multiple choice): each item is the start of a held-out passage (`context`) and
`choices` continuations of `continuation_words` words: the true one, and distractors cut at random
places from *other* passages; the model should give the true continuation the highest likelihood.
Whitespace is collapsed to single spaces everywhere, so line breaks give nothing away.
`midus_heldout_ppl`: lm-eval's rolling log-likelihood of the same documents (word/byte perplexity).
The tag `midus_heldout` names both.

Everything is deterministic for a given document list and seed.
"""

import json
import random
from pathlib import Path

import yaml

from ..errors import UsageError
from .tasks import TEMPLATES

MC_TASK = "midus_heldout_mc"
PPL_TASK = "midus_heldout_ppl"
TAG = "midus_heldout"  # both


def heldout_choice_items(documents: list[str], *, choices: int = 4, context_words: int = 32,
                         continuation_words: int = 8, min_context_words: int = 8, max_items: int | None = None,
                         seed: int = 0) -> list[dict]:
    """Items {"context", "choices", "label", "document"} from held-out documents, one per document long
    enough for min_context_words + continuation_words words."""
    if choices < 2:
        raise UsageError(f"choices={choices}: a multiple-choice item needs at least 2")
    if not 1 <= min_context_words <= context_words:
        raise UsageError(f"min_context_words={min_context_words} must be between 1 and context_words={context_words}")
    words = [doc.split() for doc in documents]
    eligible = [i for i, w in enumerate(words) if len(w) >= min_context_words + continuation_words]
    if len(eligible) < choices:
        raise UsageError(f"{len(eligible)} documents have {min_context_words + continuation_words} words or more; "
                         f"{choices} choices need at least {choices}")
    rng = random.Random(seed)
    items = []
    for i in eligible:
        w = words[i]
        cut = rng.randint(min_context_words, len(w) - continuation_words)
        true = " ".join(w[cut: cut + continuation_words])
        options = [true]
        for _ in range(20 * choices):  # distractors: random spans of other documents, all distinct
            j = rng.choice(eligible)
            start = rng.randint(0, len(words[j]) - continuation_words)
            distractor = " ".join(words[j][start: start + continuation_words])
            if j != i and distractor not in options:
                options.append(distractor)
            if len(options) == choices:
                break
        if len(options) < choices:
            continue  # too few distinct distractors (tiny, repetitive corpora)
        rng.shuffle(options)
        context = " ".join(w[max(0, cut - context_words): cut])
        items.append({"context": context, "choices": options, "label": options.index(true), "document": i})
        if max_items is not None and len(items) == max_items:
            break
    return items


def write_heldout_tasks(documents: list[str], out_dir: str | Path, *, seed: int = 0, **item_options) -> Path:
    """Write `midus_heldout_mc` and `midus_heldout_ppl` (YAML + jsonl data) to `out_dir`; use the folder
    as lm-eval's include path (`TaskManager(include_path=out_dir)`, `lm_eval --include_path out_dir`,
    `midus eval --include-path out_dir`). Returns `out_dir`."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    items = heldout_choice_items(documents, seed=seed, **item_options)
    _write_jsonl(out_dir / "heldout_mc.jsonl", items)
    _write_jsonl(out_dir / "heldout_docs.jsonl", [{"text": doc} for doc in documents if doc.strip()])
    _write_task(TEMPLATES / "heldout_mc.yaml", out_dir / "heldout_mc.yaml", out_dir / "heldout_mc.jsonl")
    _write_task(TEMPLATES / "heldout_ppl.yaml", out_dir / "heldout_ppl.yaml", out_dir / "heldout_docs.jsonl")
    return out_dir


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _write_task(template: Path, path: Path, data_file: Path) -> None:
    config = yaml.safe_load(template.read_text())
    config["dataset_kwargs"]["data_files"]["test"] = str(data_file)  # lm-eval resolves paths from the cwd
    header = "".join(line + "\n" for line in template.read_text().splitlines() if line.startswith("#"))
    path.write_text(header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
