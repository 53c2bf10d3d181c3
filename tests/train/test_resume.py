"""Exact resume after kill -9, atomic checkpoints, one run per folder, and DDP equivalence."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from midus.cli import app
from midus.errors import UsageError
from midus.train import train
from midus.train.rundir import RunFolder

from train_helpers import midus_command, write_config


def logged(run_dir) -> list[tuple]:
    """(step, kind, loss or eval loss) of every record but the timing summary."""
    return [(r["step"], r["kind"], r.get("loss", r.get("eval_loss"))) for r in RunFolder(run_dir).records()
            if r["kind"] != "summary"]


def assert_same_run(run_dir, final, reference_run, exact=True, atol=0.0):
    _, reference_final, reference_dir = reference_run
    ours, theirs = logged(run_dir), logged(reference_dir)
    assert [r[:2] for r in ours] == [r[:2] for r in theirs]
    if exact:
        assert ours == theirs
    else:
        for (step, kind, a), (_, _, b) in zip(ours, theirs):
            assert abs(a - b) <= atol, (step, kind, a, b)
    a, b = load_file(final / "model.safetensors"), load_file(reference_final / "model.safetensors")
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol * 10, msg=name)


def copy_run_config(reference_run, tmp_path, **fields):
    config = reference_run[0].model_copy(update={"output_dir": str(tmp_path / "run"), **fields})
    return config, write_config(config, tmp_path / "train.yaml")


def test_kill_9_at_a_random_step_then_resume_equals_an_unbroken_run(reference_run, tmp_path):
    config, path = copy_run_config(reference_run, tmp_path)
    kill_after = random.Random().randint(5, 11)  # a checkpoint every 4 steps: resume from 4 or 8
    process = subprocess.Popen([*midus_command(), "train", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = tmp_path / "run" / "metrics.jsonl"
    while process.poll() is None:
        if metrics.is_file() and any(json.loads(line)["step"] >= kill_after for line in metrics.read_text().splitlines()[:-1]):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    process.wait()
    assert process.returncode == -signal.SIGKILL, f"the run ended before it was killed: {process.stderr.read()[-2000:]}"
    run = RunFolder(config.output_dir)
    assert run.last_checkpoint() is not None and not run.model.exists()

    final = train(config)  # the same command again resumes
    assert_same_run(run.root, final, reference_run)


SLOW_SAVE_KILL = """
import os, signal, sys
from transformers import Trainer
original = Trainer._save_optimizer_and_scheduler

def kill_in_the_middle(self, output_dir):
    if self.state.global_step == 8:  # the second checkpoint: its weights are on disk, its optimizer not yet
        assert os.path.isfile(os.path.join(output_dir, "model.safetensors"))
        os.kill(os.getpid(), signal.SIGKILL)
    original(self, output_dir)

Trainer._save_optimizer_and_scheduler = kill_in_the_middle
from midus.cli import app
sys.argv = ["midus", "train", sys.argv[1]]
app()
"""


def test_a_kill_in_the_middle_of_a_save_leaves_the_previous_checkpoint_loadable(reference_run, tmp_path):
    config, path = copy_run_config(reference_run, tmp_path)
    result = subprocess.run([sys.executable, "-c", SLOW_SAVE_KILL, str(path)], capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    run = RunFolder(config.output_dir)
    assert [c.name for c in run.checkpoints()] == ["checkpoint-4"]
    assert (run.staging / "checkpoint-8" / "model.safetensors").is_file()  # the torn save, never published
    assert not (run.root / "checkpoint-8").exists()
    model = AutoModelForCausalLM.from_pretrained(run.root / "checkpoint-4")
    assert all(torch.isfinite(p).all() for p in model.parameters())

    final = train(config)
    assert_same_run(run.root, final, reference_run)
    assert [c.name for c in run.checkpoints()] == ["checkpoint-12", "checkpoint-16"]  # keep_checkpoints: 2
    assert not run.staging.exists() or not any(run.staging.iterdir())


def test_two_processes_with_the_same_global_batch_match_one(reference_run, tmp_path):
    """torchrun --nproc_per_node 2 (gloo): micro-batch 4 on each process, no accumulation, against one
    process accumulating two micro-batches of 4. Tolerance: 1e-4 on every logged loss (float32 sums
    in another order), 1e-3 on every weight."""
    config, path = copy_run_config(reference_run, tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run([*torchrun, "-m", "midus", "train", str(path)], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    records = RunFolder(config.output_dir).records()
    assert len([r for r in records if r["kind"] == "train"]) == config.max_steps  # written once, by rank 0
    assert_same_run(config.output_dir, RunFolder(config.output_dir).model, reference_run, exact=False, atol=1e-4)


def test_a_folder_with_another_run_is_refused_unless_overwrite(reference_run, tmp_path):
    config, path = copy_run_config(reference_run, tmp_path, max_steps=2, save_interval=2, log_interval=2, eval_interval=0)
    first = train(config)
    assert train(config) == first  # finished: the same command returns at once

    other = config.model_copy(update={"lr": 1e-4})
    write_config(other, path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: output_dir {config.output_dir} holds a different run (differs in: lr); "
        "pass --overwrite to replace it, or choose another output_dir")
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # nothing touched

    train(other, overwrite=True)
    assert "lr: 0.0001" in (tmp_path / "run" / "train_config.yaml").read_text()

    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="exists and holds no midus train run"):
        train(config.model_copy(update={"output_dir": str(stranger)}))
    assert (stranger / "notes.txt").read_text() == "mine"


def test_a_kill_before_the_final_model_is_written_resumes_from_the_last_step(reference_run, tmp_path):
    config, _ = copy_run_config(reference_run, tmp_path, max_steps=4, eval_interval=0)
    final = train(config)
    expected, records = load_file(final / "model.safetensors"), logged(config.output_dir)
    shutil.rmtree(final)  # as if killed after the last checkpoint, before the model folder was renamed into place
    resumed = train(config.model_copy(update={"keep_checkpoints": 1}))  # runtime fields may change
    assert logged(config.output_dir) == records
    assert all(torch.equal(tensor, expected[name]) for name, tensor in load_file(resumed / "model.safetensors").items())
