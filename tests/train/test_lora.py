"""LoRA through PEFT: `trainable: lora` trains adapters only, `midus merge-adapter` folds them back."""

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from cli_helpers import assert_one_line_error
from midus.cli import app
from midus.errors import UsageError
from midus.train import TrainConfig, train
from midus.train.config import TrainConfigError
from midus.train.lora import LoraSettings, add_adapter, load_adapter
from midus.train.optim import build_optimizer
from model_helpers import TINY_MEMORY, grow, random_memory, tokens
from train_helpers import tiny_config

pytest.importorskip("peft", reason="peft is not installed (pip install 'midus[lora]')")


def lora_run(model, tmp_path, corpus, **fields):
    data = {"files": [str(corpus)], "cache_dir": str(tmp_path / "cache"), "eval_sequences": 0}
    return tiny_config(model, tmp_path / "run", data, **{"trainable": "lora", "max_steps": 4, "save_interval": 0, **fields})


def test_a_lora_step_changes_only_adapter_weights(tiny_base):
    model = random_memory(grow(tiny_base, "midus", new_blocks=2, memory=TINY_MEMORY)).train()
    adapted = add_adapter(model, LoraSettings(), str(tiny_base))
    memory_block = next(i for i, entry in enumerate(model.config.layer_map) if entry["kind"] == "memory")
    adapted_modules = {name.rsplit(".lora_A", 1)[0] for name, _ in adapted.named_parameters() if ".lora_A." in name}
    block = f"base_model.model.model.layers.{memory_block}"
    # the defaults cover q/k/v of the memory blocks and HIVE's projection
    assert {f"{block}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")} | {f"{block}.memory.values.proj"} <= adapted_modules
    trainable = {name for name, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)

    before = {name: p.detach().clone() for name, p in adapted.named_parameters()}
    config = TrainConfig.parse({"model": "-", "output_dir": "-", "data": {"files": ["-"]}, "max_steps": 10,
                                "trainable": "lora", "lr": 1e-2})
    optimizer = build_optimizer(adapted, config)
    x = tokens(seed=2)
    adapted(input_ids=x, labels=x).loss.backward()
    optimizer.step()
    changed = {name for name, p in adapted.named_parameters() if not torch.equal(before[name], p)}
    assert changed <= trainable  # the model itself, memory keys and banks included, stays bit-identical
    assert {name for name in trainable if ".lora_B." in name} <= changed  # B starts at 0: its gradient is not


def test_train_saves_the_adapter_and_the_merged_folder_gives_its_logits_without_midus(tiny_midus, corpus, tmp_path):
    config = lora_run(tiny_midus, tmp_path, corpus, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    adapter = train(config)
    files = {path.name for path in adapter.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files
    assert not any(name.startswith("model") and name.endswith(".safetensors") for name in files), files
    settings = json.loads((adapter / "adapter_config.json").read_text())
    assert settings["r"] == 4 and settings["lora_alpha"] == 8 and settings["base_model_name_or_path"] == str(tiny_midus.resolve())

    merged = tmp_path / "merged"
    result = CliRunner().invoke(app, ["merge-adapter", str(adapter), str(merged)])
    assert result.exit_code == 0, result.output
    saved = json.loads((merged / "config.json").read_text())
    assert saved["model_type"] == "midus" and (merged / "modeling_midus.py").is_file()

    ids = tokens(n=16, seed=5)
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_midus)(ids).logits
        expected = load_adapter(AutoModelForCausalLM.from_pretrained(tiny_midus), adapter).eval()(ids).logits
    assert (expected - base_logits).abs().max() > 1e-4, "the adapter changed nothing"
    torch.save(ids, tmp_path / "ids.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(merged)!r}, trust_remote_code=True).eval()
        assert not [m for m in sys.modules if m == "midus" or m.startswith("midus.")], "midus was imported"
        with torch.no_grad():
            torch.save(model(torch.load({str(tmp_path / 'ids.pt')!r})).logits, {str(tmp_path / 'logits.pt')!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, rtol=0, atol=1e-5)


def test_lora_on_a_grown_llama_merges_into_a_plain_llama(tiny_grown_llama, corpus, tmp_path):
    adapter = train(lora_run(tiny_grown_llama, tmp_path, corpus, lora={"target_modules": ["q_proj", "v_proj"]}))
    merged = tmp_path / "merged"
    result = CliRunner().invoke(app, ["merge-adapter", str(adapter), str(merged)])
    assert result.exit_code == 0, result.output
    assert json.loads((merged / "config.json").read_text())["model_type"] == "llama"
    assert not (merged / "modeling_midus.py").exists()


def test_new_blocks_with_lora_is_refused_with_the_way_to_do_it(tiny_grown_llama, tmp_path):
    fields = dict(model=str(tiny_grown_llama), output_dir=str(tmp_path / "run"), data={"files": ["x.txt"]},
                  max_steps=1, trainable="new-blocks", lora={"r": 4})
    with pytest.raises(TrainConfigError, match="lora: settings given with trainable: new-blocks.*trainable: "
                                               "new-blocks first, then trainable: lora"):
        TrainConfig.parse(fields)


def test_target_modules_that_match_nothing_are_one_line_errors(tiny_midus, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_midus)
    with pytest.raises(UsageError, match="lora.target_modules: none of gate, up names a Linear layer"):
        add_adapter(model, LoraSettings(target_modules=["gate", "up"]), str(tiny_midus))


def test_merge_adapter_refuses_a_folder_without_an_adapter_and_an_existing_output(tiny_midus, tmp_path):
    result = CliRunner().invoke(app, ["merge-adapter", str(tiny_midus), str(tmp_path / "out")])
    assert_one_line_error(result, "not a LoRA adapter folder (no adapter_config.json)", code=2)
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(app, ["merge-adapter", str(tiny_midus), str(tiny_midus)])
    assert_one_line_error(result, "exists and is not empty", code=2)


def test_a_run_killed_before_its_model_was_written_writes_the_same_adapter(tiny_midus, corpus, tmp_path):
    config = lora_run(tiny_midus, tmp_path, corpus, save_interval=4, gradient_checkpointing=True)
    adapter = train(config)
    first = (adapter / "adapter_model.safetensors").read_bytes()
    shutil.rmtree(adapter)  # killed after the last checkpoint: only the model is left to write
    assert train(config) == adapter
    assert (adapter / "adapter_model.safetensors").read_bytes() == first
