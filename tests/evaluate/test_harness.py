import json

import pytest
import torch

from midus.errors import MidusError, UsageError
from midus.evaluate import MC_TASK, PPL_TASK, PRESETS, heldout_choice_items, run_tasks
from midus.evaluate.harness import expand, load_tasks, resolve_tasks
from midus.load import load_model


def continuation_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """Sum of log p(continuation tokens | context), tokens split as `context` vs `context + continuation`."""
    context_ids = tokenizer.encode(context)
    whole = tokenizer.encode(context + continuation)
    target = whole[len(context_ids):]
    ids = torch.tensor([context_ids + target])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    positions = range(len(context_ids) - 1, ids.shape[1] - 1)
    return sum(logprobs[p, ids[0, p + 1]].item() for p in positions)


def test_heldout_items_are_deterministic_and_well_formed(heldout_docs):
    items = heldout_choice_items(heldout_docs, seed=3)
    assert items == heldout_choice_items(heldout_docs, seed=3)
    assert items != heldout_choice_items(heldout_docs, seed=4)
    for item in items:
        assert len(item["choices"]) == 4 == len(set(item["choices"]))
        true = item["choices"][item["label"]]
        words = " ".join(heldout_docs[item["document"]].split())
        assert f"{item['context']} {true}" in words  # the true continuation follows the context
        assert all(len(c.split()) == 8 for c in item["choices"])
    assert len({item["label"] for item in items}) > 1  # the answer is not always in the same place


def test_lm_eval_accuracy_equals_scoring_choices_by_hand(midus_folder, offline_tasks, manager):
    loaded = load_model(str(midus_folder))
    model, tokenizer = loaded.model, loaded.tokenizer
    rows, raw = run_tasks(model, tokenizer, [MC_TASK], limit=16, batch_size=4, log_samples=True, manager=manager)
    items = [json.loads(line) for line in (offline_tasks / "heldout_mc.jsonl").read_text().splitlines()][:16]
    correct, correct_norm = 0, 0
    samples = {s["doc_id"]: s for s in raw["samples"][MC_TASK]}
    assert len(samples) == len(items) == 16
    for i, item in enumerate(items):
        lls = [continuation_logprob(model, tokenizer, item["context"], " " + c) for c in item["choices"]]
        harness_lls = [resp[0] for resp in samples[i]["filtered_resps"]]
        assert harness_lls == pytest.approx(lls, rel=1e-4, abs=1e-3)
        correct += max(range(len(lls)), key=lls.__getitem__) == item["label"]
        norm = [ll / len(c) for ll, c in zip(lls, item["choices"])]
        correct_norm += max(range(len(norm)), key=norm.__getitem__) == item["label"]
    (row,) = rows
    assert row.task == MC_TASK and row.samples == len(items)
    assert row.metrics["acc"].value == pytest.approx(correct / len(items))
    assert row.metrics["acc_norm"].value == pytest.approx(correct_norm / len(items))
    assert row.metrics["acc"].stderr > 0
    assert row.headline == "acc_norm" and row.value == row.metrics["acc_norm"].value


def test_presets_name_real_lm_eval_tasks(full_manager):
    assert expand(["paper", "arc_easy,boolq"]) == PRESETS["paper"]  # expanded, deduplicated, order kept
    assert resolve_tasks(["paper", "paper-math", MC_TASK], full_manager) == PRESETS["paper"] + PRESETS["paper-math"] + [MC_TASK]


def test_unknown_task_suggests_close_names(full_manager):
    with pytest.raises(UsageError, match=r"unknown task 'arc_eazy'; did you mean .*arc_easy"):
        resolve_tasks(["arc_eazy"], full_manager)


def test_task_whose_data_needs_the_network_is_one_line_error_offline(full_manager):
    with pytest.raises(MidusError, match=r"task piqa: its data needs the network, which is offline") as error:
        load_tasks(["piqa"], full_manager)
    assert "\n" not in str(error.value)


def test_a_tag_reports_each_of_its_tasks(midus_folder, manager):
    loaded = load_model(str(midus_folder))
    rows, _ = run_tasks(loaded.model, loaded.tokenizer, ["midus_heldout"], limit=3, manager=manager)
    assert sorted(row.task for row in rows) == sorted([MC_TASK, PPL_TASK])
    ppl = next(row for row in rows if row.task == PPL_TASK)
    assert {"word_perplexity", "byte_perplexity", "bits_per_byte"} <= set(ppl.metrics)
    assert ppl.headline == "word_perplexity" and ppl.value > 1
