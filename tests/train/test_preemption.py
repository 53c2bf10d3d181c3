"""Preemption: on SIGTERM / SIGUSR1 every process finishes its step, a checkpoint is written at that
step, the run exits with code 75 and one line, and the same command resumes to an unbroken run's end."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from midus.train import train
from midus.train.preemption import PREEMPTED_EXIT_CODE, Preempted
from midus.train.rundir import RunFolder
from midus.train.trainer import MidusTrainer

from test_resume import assert_same_run, copy_run_config
from train_helpers import midus_command, tiny_config


@pytest.fixture(scope="module")
def reference_run_log2(tiny_midus, corpus, tmp_path_factory):
    """An unbroken run logging every 2 steps: a preemption at an odd step falls between two logs."""
    root = tmp_path_factory.mktemp("reference-log2")
    config = tiny_config(tiny_midus, root / "run", {"files": [str(corpus)], "cache_dir": str(root / "cache")},
                         log_interval=2)
    return config, train(config), root / "run"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_signal_mid_step_checkpoints_that_step_and_the_resume_equals_an_unbroken_run(
        signum, reference_run_log2, tmp_path, monkeypatch):
    compute_loss = MidusTrainer.compute_loss

    def signalled(self, model, inputs, *args, **kwargs):
        if self.state.global_step == 4:  # during step 5, between two logs (every 2 steps)
            os.kill(os.getpid(), signum)
        return compute_loss(self, model, inputs, *args, **kwargs)

    config, _ = copy_run_config(reference_run_log2, tmp_path)
    handler = signal.getsignal(signum)
    monkeypatch.setattr(MidusTrainer, "compute_loss", signalled)
    name = signal.Signals(signum).name
    with pytest.raises(Preempted, match=rf"^{name} received: stopped after step 5 with a complete checkpoint, "
                                        rf".*checkpoint-5; run the same command again to resume$"):
        train(config)
    monkeypatch.undo()
    run = RunFolder(config.output_dir)
    assert [c.name for c in run.checkpoints()] == ["checkpoint-4", "checkpoint-5"] and not run.model.exists()
    assert signal.getsignal(signum) is handler  # the previous handler is back

    final = train(config)
    assert_same_run(run.root, final, reference_run_log2)  # weights and every logged loss, bitwise


def wait_for_step(process: subprocess.Popen, metrics: Path, step: int) -> None:
    """Until the run has logged `step` (the process must still be running)."""
    while process.poll() is None:
        if metrics.is_file() and any(json.loads(line)["step"] >= step for line in metrics.read_text().splitlines()[:-1]):
            return
        time.sleep(0.002)
    raise AssertionError(f"the run ended before step {step}: {process.stderr.read()[-2000:]}")


def test_midus_train_on_sigterm_exits_75_with_one_line_naming_the_command(reference_run, tmp_path):
    config, path = copy_run_config(reference_run, tmp_path)
    process = subprocess.Popen([*midus_command(), "train", str(path)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    wait_for_step(process, tmp_path / "run" / "metrics.jsonl", 3)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate()[1]
    assert process.returncode == PREEMPTED_EXIT_CODE, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    run = RunFolder(config.output_dir)
    step = run.checkpoints()[-1].name.removeprefix("checkpoint-")
    assert last == (f"preempted: SIGTERM received: stopped after step {step} with a complete checkpoint, "
                    f"{run.root / f'checkpoint-{step}'}; run the same command again to resume: midus train {path}")
    assert int(step) == max(r["step"] for r in run.records()) and not run.model.exists()

    final = train(config)
    assert_same_run(run.root, final, reference_run)


def worker_pids(parent: int) -> dict[int, int]:
    """{rank: pid} of the processes torchrun started."""
    workers = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:
                environ = (stat.parent / "environ").read_bytes().split(b"\0")
                rank = next(int(e.split(b"=")[1]) for e in environ if e.startswith(b"RANK="))
                workers[rank] = int(stat.parent.name)
        except (OSError, StopIteration, IndexError):
            continue
    return workers


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_two_processes_save_together_on_a_signal_and_resume_to_the_unbroken_run(signum, reference_run, tmp_path):
    """SIGTERM goes to torchrun, which passes it to both workers (as SLURM and Kubernetes do); SIGUSR1
    goes to rank 1 alone: the processes agree on the step, and both write their part of its checkpoint."""
    config, path = copy_run_config(reference_run, tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "midus", "train", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(torchrun, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    wait_for_step(process, tmp_path / "run" / "metrics.jsonl", 3)
    os.kill(process.pid if signum == signal.SIGTERM else worker_pids(process.pid)[1], signum)
    stderr = process.communicate()[1]
    assert process.returncode != 0
    run = RunFolder(config.output_dir)
    step = run.checkpoints()[-1].name.removeprefix("checkpoint-")
    name = signal.Signals(signum).name
    assert stderr.count(f"preempted: {name} received: stopped after step {step} with a complete checkpoint") == 2, stderr[-3000:]
    assert {p.name for p in (run.root / f"checkpoint-{step}").glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}

    result = subprocess.run(torchrun, capture_output=True, text=True, env=env)  # the same command resumes
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(run.root, run.model, reference_run, exact=False, atol=1e-4)
