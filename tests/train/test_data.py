"""Training data: packing with EOS, response-only labels, streaming, hub-style folders, bad data."""

import json
from itertools import chain

import pytest
from datasets import Dataset
from transformers import AutoTokenizer

from midus.data.loading import IGNORE_INDEX, DataError, Pack, build_datasets, collate
from midus.train import DataConfig


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    return AutoTokenizer.from_pretrained(tiny_base)


def data_config(tmp_path, **fields) -> DataConfig:
    return DataConfig.model_validate({"cache_dir": str(tmp_path / "cache"), "eval_sequences": 0, **fields})


def jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_documents_are_packed_into_full_sequences_with_eos_between(corpus, tokenizer, tmp_path):
    train, held_out = build_datasets(data_config(tmp_path, files=[str(corpus)]), tokenizer, seq_len=32, seed=0)
    assert held_out is None and len(train) > 100
    assert all(len(ids) == 32 for ids in train["input_ids"])
    documents = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    stream = list(chain.from_iterable(tokenizer(doc)["input_ids"] + [tokenizer.eos_token_id] for doc in documents))
    assert list(chain.from_iterable(train["input_ids"])) == stream[: len(train) * 32]  # order kept, tail dropped
    batch = collate([train[0], train[1]])
    assert batch["input_ids"].shape == (2, 32) and batch["labels"].equal(batch["input_ids"])
    assert train.cache_files and all(str(tmp_path / "cache") in f["filename"] for f in train.cache_files)


def test_held_out_documents_are_disjoint_from_training(corpus, tokenizer, tmp_path):
    config = data_config(tmp_path, files=[str(corpus)], eval_fraction=0.1, eval_sequences=5)
    train, held_out = build_datasets(config, tokenizer, seq_len=32, seed=0)
    assert len(held_out) == 5
    train_text = set(map(tuple, train["input_ids"]))
    assert not train_text & set(map(tuple, held_out["input_ids"]))
    again, _ = build_datasets(config, tokenizer, seq_len=32, seed=0)
    assert again["input_ids"] == train["input_ids"]  # same seed, same split


def test_instruction_pairs_carry_loss_on_the_response_only(tokenizer, tmp_path):
    rows = [{"instruction": f"Name number {i}.", "input": "" if i % 2 else "Be brief.", "output": f"It is {i}."} for i in range(40)]
    config = data_config(tmp_path, files=[str(jsonl(tmp_path / "pairs.jsonl", rows))], format="instruction",
                         prompt_field=["instruction", "input"], response_field="output", template="Q: {prompt}\nA:")
    train, _ = build_datasets(config, tokenizer, seq_len=64, seed=0)
    ids, labels = list(chain.from_iterable(train["input_ids"])), list(chain.from_iterable(train["labels"]))
    expected_ids, expected_labels = [], []
    for row in rows:
        prompt = "\n\n".join(text for text in (row["instruction"], row["input"]) if text)
        prompt_ids = tokenizer(f"Q: {prompt}\nA:")["input_ids"]
        response_ids = tokenizer(row["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        expected_ids += prompt_ids + response_ids
        expected_labels += [IGNORE_INDEX] * len(prompt_ids) + response_ids
    assert ids == expected_ids[: len(ids)] and labels == expected_labels[: len(ids)]
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(ids, labels))
    assert 0 < labels.count(IGNORE_INDEX) < len(labels)
    batch = collate([train[0]])
    assert (batch["labels"] == IGNORE_INDEX).any() and not batch["labels"].equal(batch["input_ids"])


def test_packing_drops_sequences_without_any_loss_token():
    batch = {"input_ids": [[1, 2, 3, 4, 5, 6], [7, 8]], "labels": [[-100] * 4 + [5, 6], [-100, 8]]}
    packed = Pack(seq_len=4)(batch)
    assert packed == {"input_ids": [[5, 6, 7, 8]], "labels": [[5, 6, -100, 8]]}  # [1..4] is all prompt


def test_chat_template_masks_the_rendered_prompt(tokenizer, tmp_path):
    chat = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    chat.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
                          "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    rows = [{"prompt": f"Say {i}", "response": f"{i} {i} {i}"} for i in range(30)]
    config = data_config(tmp_path, files=[str(jsonl(tmp_path / "chat.jsonl", rows))], format="instruction", chat_template=True)
    train, _ = build_datasets(config, chat, seq_len=64, seed=0)
    first = rows[0]
    prompt_ids = chat.apply_chat_template([{"role": "user", "content": first["prompt"]}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False)
    labels = train[0]["labels"]
    assert labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert labels[len(prompt_ids)] == train[0]["input_ids"][len(prompt_ids)] != IGNORE_INDEX


def test_streaming_gives_the_same_sequences_as_map_style(corpus, tokenizer, tmp_path):
    mapped, _ = build_datasets(data_config(tmp_path, files=[str(corpus)]), tokenizer, 32, seed=0)
    streamed, _ = build_datasets(data_config(tmp_path, files=[str(corpus)], streaming=True), tokenizer, 32, seed=0)
    assert [row["input_ids"] for row in streamed] == mapped["input_ids"]
    train, held_out = build_datasets(data_config(tmp_path, files=[str(corpus)], streaming=True, eval_sequences=3),
                                     tokenizer, 32, seed=0)
    assert held_out["input_ids"] == mapped["input_ids"][:3]  # a stream holds out its first sequences
    assert next(iter(train))["input_ids"] == mapped["input_ids"][3]


def test_a_dataset_folder_goes_through_the_hub_loader(corpus, tokenizer, tmp_path):
    """`data.dataset` takes what `datasets.load_dataset` takes: a hub id, or a folder laid out like a
    hub dataset repo (here, offline), with named splits."""
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    (tmp_path / "repo" / "data").mkdir(parents=True)
    Dataset.from_dict({"body": texts[:50]}).to_parquet(tmp_path / "repo" / "data" / "train-00000-of-00001.parquet")
    Dataset.from_dict({"body": texts[50:]}).to_parquet(tmp_path / "repo" / "data" / "validation-00000-of-00001.parquet")
    config = data_config(tmp_path, dataset=str(tmp_path / "repo"), text_field="body", eval_split="validation", eval_sequences=2)
    train, held_out = build_datasets(config, tokenizer, 32, seed=0)
    assert len(train) > 50 and len(held_out) == 2
    with pytest.raises(DataError, match=r"no field 'text'; its fields are body"):
        build_datasets(data_config(tmp_path, dataset=str(tmp_path / "repo")), tokenizer, 32, seed=0)


def test_txt_files_split_into_paragraphs(tokenizer, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("First paragraph,\nstill the first.\n\nSecond one.\n\nThird one.\n")
    train, _ = build_datasets(data_config(tmp_path, files=[str(path)]), tokenizer, seq_len=4, seed=0)
    tokens = list(chain.from_iterable(train["input_ids"]))
    assert tokens.count(tokenizer.eos_token_id) >= 2


@pytest.mark.parametrize("case, message", [
    ("missing-field", r"no field 'text'; its fields are body"),
    ("empty", r"no documents \(empty\)"),
    ("no-file", r"data file .*nowhere.jsonl: no such file"),
    ("mixed", r"data files mix types"),
    ("unknown-type", r"data files of type .csv: supported are .txt, .jsonl, .json, .parquet"),
    ("too-short", r"not even one training sequence of seq_len=32 tokens"),
    ("held-out-too-short", r"the held-out part holds less than one sequence"),
])
def test_bad_data_is_one_clear_error(case, message, tokenizer, tmp_path):
    one = jsonl(tmp_path / "one.jsonl", [{"text": "a few words"}])
    fields = {
        "missing-field": dict(files=[str(jsonl(tmp_path / "b.jsonl", [{"body": "x"}]))]),
        "empty": dict(files=[str(jsonl(tmp_path / "e.jsonl", []))]),
        "no-file": dict(files=[str(tmp_path / "nowhere.jsonl")]),
        "mixed": dict(files=[str(one), str(tmp_path / "one.txt")]),
        "unknown-type": dict(files=[str(tmp_path / "one.csv")]),
        "too-short": dict(files=[str(one)]),
        "held-out-too-short": dict(files=[str(jsonl(tmp_path / "long.jsonl", [{"text": "word " * 200}] * 3))],
                                   eval_files=[str(one)], eval_sequences=4),
    }[case]
    (tmp_path / "one.txt").write_text("x")
    (tmp_path / "one.csv").write_text("text\nx\n")
    with pytest.raises(DataError, match=message):
        build_datasets(data_config(tmp_path, **fields), tokenizer, seq_len=32, seed=0)
