"""Every memory setting of the ablation (benchmarks/memory_ablation.yaml) trains on a tiny model: every
memory tensor moves, the memory ends up contributing, and the groups follow `projection_group`."""

import pytest
from safetensors.torch import load_file

from midus import Recipe
from midus.train import train
from midus.train.rundir import RunFolder
from midus.growth import upscale_to_folder
from model_helpers import TINY_MEMORY
from train_helpers import tiny_config

VARIANTS = {
    "zero-proj": ({}, {}),
    "zero-bank": ({"zero_init": "bank"}, {}),
    "zero-none": ({"zero_init": "none"}, {}),
    "projection-in-memory-group": ({}, {"projection_group": "memory"}),
    "memory-lr-x10": ({}, {"memory_lr": 3e-2}),
    "query-norm-layer": ({"query_norm": "layer"}, {}),
    "query-norm-none": ({"query_norm": "none"}, {}),
    "topk-2": ({"topk": 2}, {}),
    "n-keys-4": ({"n_keys": 4}, {}),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_memory_setting_trains(variant, tiny_base, corpus, tmp_path):
    memory, cpt = VARIANTS[variant]
    recipe = Recipe.parse({"base": str(tiny_base), "method": "midus", "new_blocks": 2, "dtype": "float32",
                           "memory": {**TINY_MEMORY, **memory}})
    grown = upscale_to_folder(recipe, tmp_path / "grown")
    config = tiny_config(grown, tmp_path / "run", {"files": [str(corpus)], "cache_dir": str(tmp_path / "cache")},
                         max_steps=4, save_interval=0, eval_interval=0, **cpt)
    final = train(config)
    before, after = load_file(grown / "model.safetensors"), load_file(final / "model.safetensors")
    memory_tensors = [name for name in before if ".memory." in name]
    assert any(name.endswith("retrieval.keys") for name in memory_tensors)
    assert any(name.endswith("values.bank") for name in memory_tensors)
    assert all(not before[name].equal(after[name]) for name in memory_tensors), variant
    records = RunFolder(tmp_path / "run").records()
    train_records = [r for r in records if r["kind"] == "train"]
    assert len(train_records) == 4 and all(r["loss"] < 10 for r in train_records)
    if cpt.get("projection_group") == "memory":  # P at the memory's constant rate, no warmup
        assert train_records[0]["lr/memory"] == config.lr
    if "memory_lr" in cpt:
        assert all(r["lr/memory"] == cpt["memory_lr"] for r in train_records)
    final_eval = next(r for r in records if r["kind"] == "eval")
    assert final_eval["eval_memory_share/mean"] > 0
