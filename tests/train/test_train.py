"""End-to-end `midus train`: loss falls, the optimiser rule, frozen originals, output format."""

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from midus.errors import MidusError
from midus.parameters import memory_group_parameter_names
from midus.train import train
from midus.train.optim import WarmupCosine
from midus.train.rundir import RunFolder

from train_helpers import tiny_config


def weights(folder):
    return load_file(folder / "model.safetensors")


def test_loss_falls_and_a_llama_stays_a_plain_llama(tiny_base, corpus, tmp_path):
    config = tiny_config(tiny_base, tmp_path / "run", {"files": [str(corpus)], "cache_dir": str(tmp_path / "cache")},
                         max_steps=24, save_interval=0, eval_interval=12, log_interval=2)
    final = train(config)
    records = RunFolder(tmp_path / "run").records()
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    evals = [r["eval_loss"] for r in records if r["kind"] == "eval"]
    assert losses[-1] < losses[0] - 0.5, losses
    assert evals[-1] < evals[0] and records[-2]["eval_ppl"] == pytest.approx(torch.tensor(evals[-1]).exp().item())
    assert all(r["tokens_per_s"] > 0 for r in records if r["kind"] == "train" and r["step"] > 2)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert not list((tmp_path / "run").glob("checkpoint-*"))  # save_interval 0: no checkpoints

    script = textwrap.dedent(f"""
        import sys
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained({str(final)!r})
        AutoTokenizer.from_pretrained({str(final)!r})
        assert type(model).__name__ == "LlamaForCausalLM" and model.config.model_type == "llama"
        assert "midus" not in sys.modules and not getattr(model.config, "auto_map", None)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


def test_memory_keeps_max_lr_without_decay_and_the_rest_follows_the_schedule(reference_run):
    config, final, run_dir = reference_run
    records = [r for r in RunFolder(run_dir).records() if r["kind"] == "train"]
    assert [r["step"] for r in records] == list(range(1, config.max_steps + 1))
    schedule = WarmupCosine(config.warmup_steps, config.total_steps, config.min_lr_ratio)
    for record in records:
        assert record["lr/memory"] == config.lr  # the maximum, at every step, warmup included
        assert record["lr/decay"] == pytest.approx(config.lr * schedule(record["step"] - 1), rel=1e-12)
        assert record["lr/no_decay"] == record["lr/decay"]
    assert records[0]["lr/decay"] == pytest.approx(config.lr / 2)  # warmup: 2 steps
    assert records[-1]["lr/decay"] == pytest.approx(config.lr * config.min_lr_ratio)  # the floor at the end

    # the optimizer saved in the last checkpoint: the memory parameters form the undecayed constant group
    checkpoint = RunFolder(run_dir).last_checkpoint()
    groups = {g["name"]: g for g in torch.load(checkpoint / "optimizer.pt", weights_only=True)["param_groups"]}
    memory = memory_group_parameter_names(AutoModelForCausalLM.from_pretrained(final))
    assert len(memory) == 4 and len(groups["memory"]["params"]) == len(memory)  # 2 blocks x (keys, bank)
    assert groups["memory"]["weight_decay"] == 0 and groups["no_decay"]["weight_decay"] == 0
    assert groups["decay"]["weight_decay"] == config.weight_decay
    scheduler = torch.load(checkpoint / "scheduler.pt", weights_only=True)
    assert scheduler["base_lrs"] == [config.lr] * 3


def test_midus_output_keeps_its_format_and_loads_in_a_fresh_process(reference_run, tiny_midus, tmp_path):
    config, final, _ = reference_run
    for name in ("modeling_midus.py", "configuration_midus.py", "tokenizer.json", "midus_recipe.yaml"):
        assert (final / name).is_file(), name
    saved = json.loads((final / "config.json").read_text())
    assert saved["model_type"] == "midus" and set(saved["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    before, after = weights(tiny_midus), weights(final)
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)

    ids = torch.randint(5, 500, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.save(ids, tmp_path / "ids.pt")
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(final)(ids).logits
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(final)!r}, trust_remote_code=True)
        assert "midus" not in sys.modules
        with torch.no_grad():
            torch.save(model(torch.load({str(tmp_path / 'ids.pt')!r})).logits, {str(tmp_path / 'logits.pt')!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_grown_llama", "tiny_midus"])
def test_new_blocks_training_leaves_every_original_tensor_bit_identical(fixture, corpus, tmp_path, request):
    model_dir = request.getfixturevalue(fixture)
    config = tiny_config(model_dir, tmp_path / "run", {"files": [str(corpus)], "cache_dir": str(tmp_path / "cache"), "eval_sequences": 0},
                         trainable="new-blocks", max_steps=4, save_interval=0)
    final = train(config)
    before, after = weights(model_dir), weights(final)
    source, saved = (json.loads((folder / "config.json").read_text()) for folder in (model_dir, final))
    assert saved["model_type"] == source["model_type"] and saved["layer_map"] == source["layer_map"]
    new_layers = [i for i, entry in enumerate(source["layer_map"]) if entry["new"]]
    new = tuple(f"model.layers.{i}." for i in new_layers)
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith(new) for name in changed), sorted(changed)
    originals = [name for name in before if not name.startswith(new)]
    assert originals and all(torch.equal(before[name], after[name]) for name in originals)


def test_memory_only_training_moves_only_memory_layers(tiny_midus, corpus, tmp_path):
    config = tiny_config(tiny_midus, tmp_path / "run", {"files": [str(corpus)], "cache_dir": str(tmp_path / "cache"), "eval_sequences": 0},
                         trainable="memory", max_steps=3, save_interval=0)
    before, after = weights(tiny_midus), weights(train(config))
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(".memory." in name for name in changed), sorted(changed)


def test_instruction_tuning_trains_on_responses(tiny_base, tmp_path):
    pairs = [{"instruction": f"Repeat the word number {i}.", "input": "" if i % 2 else "word", "output": f"number {i} " * 3}
             for i in range(60)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    config = tiny_config(tiny_base, tmp_path / "run", {"files": [str(data)], "format": "instruction", "cache_dir": str(tmp_path / "cache"),
                         "prompt_field": ["instruction", "input"], "response_field": "output", "eval_fraction": 0.1},
                         max_steps=12, save_interval=0, eval_interval=0)
    train(config)
    losses = [r["loss"] for r in RunFolder(tmp_path / "run").records() if r["kind"] == "train"]
    assert losses[-1] < losses[0] - 1


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_midus, corpus, tmp_path, monkeypatch):
    from midus.train.trainer import MidusTrainer

    compute_loss = MidusTrainer.compute_loss

    def poisoned(self, model, inputs, *args, **kwargs):
        loss = compute_loss(self, model, inputs, *args, **kwargs)
        return loss * float("nan") if self.state.global_step == 6 else loss

    monkeypatch.setattr(MidusTrainer, "compute_loss", poisoned)
    config = tiny_config(tiny_midus, tmp_path / "run", {"files": [str(corpus)], "cache_dir": str(tmp_path / "cache"), "eval_sequences": 0})
    with pytest.raises(MidusError, match=r"loss became nan at step 7; stopped before updating the weights; last good checkpoint: .*checkpoint-4"):
        train(config)
    run = RunFolder(tmp_path / "run")
    assert [c.name for c in run.checkpoints()] == ["checkpoint-4"] and not run.model.exists()
    model = AutoModelForCausalLM.from_pretrained(run.last_checkpoint())
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bf16_with_gradient_checkpointing_keeps_the_stored_dtype(tiny_base, corpus, tmp_path):
    from midus.growth import upscale_to_folder
    from model_helpers import recipe

    grown = upscale_to_folder(recipe(tiny_base, "midus", new_blocks=1, dtype="bfloat16"), tmp_path / "grown-bf16")
    config = tiny_config(grown, tmp_path / "run", {"files": [str(corpus)], "cache_dir": str(tmp_path / "cache"), "eval_sequences": 0},
                         precision="bf16", gradient_checkpointing=True, max_steps=2, save_interval=0)
    final = train(config)
    assert {tensor.dtype for tensor in weights(final).values()} == {torch.bfloat16}
    assert json.loads((final / "config.json").read_text())["dtype"] == "bfloat16"
    losses = [r["loss"] for r in RunFolder(tmp_path / "run").records() if r["kind"] == "train"]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
