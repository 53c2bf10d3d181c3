"""The training config and the bad inputs `midus train` refuses with one clear line."""

import importlib.util
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from midus.cli import app
from midus.errors import MidusError, UsageError
from midus.schema import parse_override
from midus.train import TrainConfig, TrainConfigError, train
from train_helpers import tiny_config

VALID = {"model": "m", "output_dir": "out", "data": {"files": ["a.txt"]}, "max_steps": 10}


@pytest.mark.parametrize("change, message", [
    ({"max_tokens": 100}, "give exactly one budget: max_tokens or max_steps"),
    ({"max_steps": None}, "give exactly one budget"),
    ({"batch_size": 10, "micro_batch_size": 4}, "batch_size=10 is not a multiple of micro_batch_size=4"),
    ({"save_interval": 15, "log_interval": 10}, "save_interval=15 must be a multiple of log_interval=10"),
    ({"learning_rate": 1e-3}, "learning_rate: unknown field"),
    ({"precision": "fp16"}, "precision: got 'fp16'; expected one of fp32, bf16"),
    ({"trainable": "adapters"}, "trainable: got 'adapters'"),
    ({"lora": {"r": 4}}, "lora: settings given with trainable: all"),
    ({"trainable": "lora", "lora": {"r": 0}}, "lora.r: got 0"),
    ({"trainable": "lora", "lora": {"rank": 4}}, "lora.rank: unknown field"),
    ({"trainable": "lora", "fsdp": True}, "trainable: lora with fsdp: true is not supported"),
    ({"data": {"files": ["a.txt"], "dataset": "x/y"}}, "give exactly one of data.files (local files) or data.dataset"),
    ({"data": {"files": ["a.txt"], "eval_split": "validation"}}, "data.eval_split applies to a hub dataset"),
    ({"data": {"files": ["a.txt"], "template": "no placeholder"}}, "data.template must contain {prompt}"),
    ({"seq_len": 1}, "seq_len: got 1; expected an integer >= 2"),
])
def test_bad_configs_name_the_problem(change, message):
    with pytest.raises(TrainConfigError) as error:
        TrainConfig.parse({**VALID, **change}, source="cfg.yaml")
    assert str(error.value).startswith("cfg.yaml: ") and message in str(error.value) and "\n" not in str(error.value)


def test_budget_and_accumulation():
    config = TrainConfig.parse({**VALID, "max_steps": None, "max_tokens": 1000, "seq_len": 16, "batch_size": 8,
                                "micro_batch_size": 2, "warmup": 0.25})
    assert config.tokens_per_step == 128 and config.total_steps == 8 and config.warmup_steps == 2
    assert config.gradient_accumulation(1) == 4 and config.gradient_accumulation(4) == 1
    with pytest.raises(TrainConfigError, match="not a multiple of micro_batch_size=2 x 3 processes"):
        config.gradient_accumulation(3)


def test_overrides_and_run_identity(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(VALID))
    config = TrainConfig.from_yaml(path, dict([parse_override("data.streaming=true"), parse_override("lr=1e-3")]))
    assert config.data.streaming is True and config.lr == 1e-3
    assert config.model_copy(update={"keep_checkpoints": 5, "output_dir": "elsewhere"}).fingerprint() == config.fingerprint()
    assert config.model_copy(update={"seed": 1}).fingerprint() != config.fingerprint()
    # the memory probe is logging only; a field added later is not in the identity at its default
    assert config.model_copy(update={"memory_probe_sequences": 0}).fingerprint() == config.fingerprint()
    assert "projection_group" not in config.identity()
    assert config.model_copy(update={"projection_group": "memory"}).fingerprint() != config.fingerprint()
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        parse_override("max_steps")
    assert TrainConfig.parse(yaml.safe_load(config.to_yaml())) == config


def test_cli_prints_one_error_line(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({**VALID, "max_tokens": 5}))
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 2
    assert result.output == f"error: {path}: give exactly one budget: max_tokens or max_steps\n"
    result = CliRunner().invoke(app, ["train", str(path), "--max-steps", "3", "--set", "oops"])
    assert result.exit_code == 2 and "expected KEY=VALUE" in result.output


def test_bad_inputs_fail_before_training(tiny_base, corpus, tmp_path):
    data = {"files": [str(corpus)], "cache_dir": str(tmp_path / "cache")}
    with pytest.raises(UsageError, match=r"seq_len=1024 exceeds the 512 positions of model .*; use seq_len <= 512"):
        train(tiny_config(tiny_base, tmp_path / "a", data, seq_len=1024))

    bare = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_base, bare, ignore=shutil.ignore_patterns("tokenizer*"))
    with pytest.raises(MidusError, match=r"no usable tokenizer in .*no-tokenizer .*set `tokenizer:` in the config"):
        train(tiny_config(bare, tmp_path / "b", data))
    assert train(tiny_config(bare, tmp_path / "c", data, tokenizer=str(tiny_base), max_steps=1, save_interval=0)).is_dir()

    with pytest.raises(MidusError, match=r"nowhere: no such folder"):
        train(tiny_config(tmp_path / "nowhere", tmp_path / "d", data))
    with pytest.raises(UsageError, match=r"contains the input"):
        train(tiny_config(tiny_base, tiny_base.parent, data))
    with pytest.raises(UsageError, match=r"no field 'body'"):
        train(tiny_config(tiny_base, tmp_path / "e", {**data, "text_field": "body"}))


def test_report_to_needs_its_package(tiny_base, corpus, tmp_path):
    if importlib.util.find_spec("tensorboard"):
        pytest.skip("tensorboard is installed here: nothing to refuse")
    config = tiny_config(tiny_base, tmp_path / "run", {"files": [str(corpus)]}, report_to=["tensorboard"])
    with pytest.raises(UsageError, match=r"report_to: tensorboard is not installed \(pip install tensorboard\)"):
        train(config)



def test_fsdp_on_one_process_is_refused(tiny_base, corpus, tmp_path):
    with pytest.raises(UsageError, match=r"^fsdp: true shards over several processes and this is one; start it under "
                                         r"torchrun --nproc_per_node N \(N >= 2\), or drop fsdp$"):
        train(tiny_config(tiny_base, tmp_path / "run", {"files": [str(corpus)]}, fsdp=True))
    assert not (tmp_path / "run").exists()
