"""The memory probe (share of the residual stream, loss change without the memory) against a reference
computed another way, and its records in a training run."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from midus.train.memory_probe import memory_probe, memory_sites
from midus.train.metrics import memory_curves
from midus.train.rundir import RunFolder
from midus.train.trainer import first_sequences
from model_helpers import grow, random_memory, tokens


def nll(model):
    def batch_loss(batch):
        ids = batch["input_ids"]
        logits = model(input_ids=ids).logits[:, :-1]
        return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"), ids[:, 1:].numel()
    return batch_loss


def mean_nll(model, batches):
    with torch.no_grad():
        totals = [nll(model)(batch) for batch in batches]
    return sum(t for t, _ in totals).item() / sum(n for _, n in totals)


def block_shares(model, batches, index):
    """||block output - block input|| / ||block input|| per token: the block adds exactly its memory."""
    layer, ratios = model.model.layers[index], []

    def hook(module, args, kwargs, output):
        x = args[0] if args else kwargs["hidden_states"]
        ratios.append(((output - x).norm(dim=-1) / x.norm(dim=-1)).flatten())

    handle = layer.register_forward_hook(hook, with_kwargs=True)
    with torch.no_grad():
        for batch in batches:
            model(input_ids=batch["input_ids"])
    handle.remove()
    return torch.cat(ratios).mean().item()


@pytest.fixture(scope="module")
def batches():
    return [{"input_ids": tokens(n=16, batch=2, seed=seed)} for seed in range(3)]


def test_share_and_removal_match_a_reference(tiny_base, batches):
    model = random_memory(grow(tiny_base, "midus"), scale=0.3)
    sites = memory_sites(model)
    assert sorted(sites) == [i for i, entry in enumerate(model.config.layer_map) if entry["kind"] == "memory"]
    probe = memory_probe(model, batches, nll(model))
    baseline = mean_nll(model, batches)
    for index in sites:
        assert probe[f"share/{index}"] == pytest.approx(block_shares(model, batches, index), rel=1e-4)
        proj = model.model.layers[index].memory.values.proj.weight
        kept = proj.detach().clone()
        with torch.no_grad():
            proj.zero_()  # P = 0: the block without its memory
        assert probe[f"removal/{index}"] == pytest.approx(mean_nll(model, batches) - baseline, abs=1e-5)
        with torch.no_grad():
            proj.copy_(kept)
    assert probe["share/mean"] == pytest.approx(sum(probe[f"share/{i}"] for i in sites) / len(sites))
    with torch.no_grad():
        for index in sites:
            model.model.layers[index].memory.values.proj.weight.zero_()
    assert probe["removal/all"] == pytest.approx(mean_nll(model, batches) - baseline, abs=1e-5)
    assert abs(probe["removal/all"]) > 1e-3  # the memory does change this model's loss


def test_pkm_blocks_are_probed_after_attention(tiny_base, batches):
    model = grow(tiny_base, "pkm")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.model.layers:
            if hasattr(getattr(layer, "mlp", None), "retrieval"):
                layer.mlp.values.bank.copy_(torch.randn(layer.mlp.values.bank.shape, generator=generator))
    probe = memory_probe(model, batches, nll(model))
    index = next(iter(memory_sites(model)))
    layer, ratios = model.model.layers[index], []
    streams = []
    handles = [layer.post_attention_layernorm.register_forward_pre_hook(lambda m, a: streams.append(a[0])),
               layer.mlp.register_forward_hook(lambda m, a, out: ratios.append(
                   (out.norm(dim=-1) / streams[-1].norm(dim=-1)).flatten()))]
    with torch.no_grad():
        for batch in batches:
            model(input_ids=batch["input_ids"])
    for handle in handles:
        handle.remove()
    assert probe[f"share/{index}"] == pytest.approx(torch.cat(ratios).mean().item(), rel=1e-4)
    assert probe[f"removal/{index}"] != 0


def test_a_model_without_memory_has_no_probe(tiny_base, batches):
    model = grow(tiny_base, "llama-pro")
    assert memory_probe(model, batches, nll(model)) == {}


def test_training_logs_the_probe_at_every_evaluation(reference_run):
    config, _, run_dir = reference_run
    records = RunFolder(run_dir).records()
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [8, 16]
    layer_map = json.loads((Path(config.model) / "config.json").read_text())["layer_map"]
    layers = [str(i) for i, entry in enumerate(layer_map) if entry["kind"] == "memory"]
    assert len(layers) == 2
    for record in evals:
        assert {f"eval_memory_share/{i}" for i in layers} | {"eval_memory_removal/all"} <= set(record)
    final = evals[-1]
    assert final["eval_memory_share/mean"] > 0  # P grew from zero
    curves = memory_curves([(r["step"] * config.tokens_per_step, r) for r in evals], "eval_memory_share/")
    assert list(curves) == [*layers, "mean"] and len(curves["mean"]) == 2


def test_the_probe_takes_the_first_sequences_of_the_held_out_batches():
    batches = [{"input_ids": torch.arange(8).view(4, 2) + 8 * i, "labels": torch.zeros(4, 2)} for i in range(3)]
    taken = first_sequences(batches, 6)
    assert [len(b["input_ids"]) for b in taken] == [4, 2] and [len(b["labels"]) for b in taken] == [4, 2]
    assert torch.equal(torch.cat([b["input_ids"] for b in taken]), torch.arange(12).view(6, 2))
    assert len(first_sequences(batches, 100)) == 3
