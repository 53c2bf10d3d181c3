"""The run folder survives what users and disks do: two starts at once, a lock left by a dead run,
a checkpoint damaged after it was written, a full disk mid-save, a run that fails before its first step."""

import errno
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from midus.checkpoint import CHECKSUMS_FILE, checksum_problem
from midus.cli import app
from midus.errors import MidusError
from midus.train import train
from midus.train.lock import LOCK_FILE
from midus.train.rundir import RunFolder

from cli_helpers import assert_one_line_error
from test_preemption import wait_for_step
from test_resume import assert_same_run, copy_run_config
from train_helpers import midus_command, write_config


def test_a_second_start_is_refused_while_the_first_goes_on_and_finishes(reference_run, tmp_path):
    config, path = copy_run_config(reference_run, tmp_path)
    first = subprocess.Popen([*midus_command(), "train", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_step(first, tmp_path / "run" / "metrics.jsonl", 1)
    second = CliRunner().invoke(app, ["train", str(path)])
    assert_one_line_error(second, f"{config.output_dir} is in use by another midus train run "
                                  f"(pid {first.pid} on host {socket.gethostname()})", code=1)
    assert first.wait() == 0, first.stderr.read()[-2000:]
    assert_same_run(config.output_dir, RunFolder(config.output_dir).model, reference_run)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_lock_left_by_a_dead_run_on_this_host_is_taken_over(reference_run, tmp_path, capsys):
    config, _ = copy_run_config(reference_run, tmp_path, max_steps=2, save_interval=2, log_interval=2, eval_interval=0)
    run = RunFolder(config.output_dir)
    run.root.mkdir()
    pid = dead_pid()
    (run.root / LOCK_FILE).write_text(f"{pid} {socket.gethostname()}\n")
    assert train(config) == run.model and (run.model / "model.safetensors").is_file()
    assert (f"warning: {run.root}: taking over the lock of a midus train run that is gone "
            f"(pid {pid} on host {socket.gethostname()})") in capsys.readouterr().err.splitlines()
    assert (run.root / LOCK_FILE).read_text() == ""  # released: it names nobody


def test_a_lock_of_another_host_is_not_taken_over(reference_run, tmp_path):
    config, _ = copy_run_config(reference_run, tmp_path, max_steps=2, save_interval=2, log_interval=2, eval_interval=0)
    root = tmp_path / "run"
    root.mkdir()
    (root / LOCK_FILE).write_text("4242 node-17\n")
    with pytest.raises(MidusError, match=rf"was locked by a midus train run on another host \(pid 4242 on host node-17\).*delete {root / LOCK_FILE}"):
        train(config)
    assert sorted(p.name for p in root.iterdir()) == [LOCK_FILE]  # nothing else was written


def test_a_checkpoint_truncated_after_it_was_written_is_skipped_and_the_run_still_ends_equal(reference_run, tmp_path, capsys):
    config, _ = copy_run_config(reference_run, tmp_path)
    run = RunFolder(config.output_dir)
    train(config)
    os.replace(run.model, tmp_path / "unbroken-model")  # as if killed before the final model was written
    newest = run.root / "checkpoint-16"
    weights = newest / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    assert checksum_problem(newest) == "model.safetensors does not match its checksum"

    final = train(config)  # resumes from checkpoint-12, not from the damaged checkpoint-16
    assert f"warning: skipping checkpoint {newest}: model.safetensors does not match its checksum" in capsys.readouterr().err
    assert_same_run(run.root, final, reference_run)
    assert [c.name for c in run.checkpoints()] == ["checkpoint-12", "checkpoint-16"] and checksum_problem(newest) is None

    # every checkpoint damaged (a bit flipped, a file lost): the error says none is left
    os.replace(run.model, tmp_path / "second-model")
    optimizer = run.root / "checkpoint-12" / "optimizer.pt"
    data = bytearray(optimizer.read_bytes())
    data[len(data) // 2] ^= 1
    optimizer.write_bytes(bytes(data))
    (newest / "scheduler.pt").unlink()
    with pytest.raises(MidusError, match=rf"no intact checkpoint left in {run.root}: checkpoint-12, checkpoint-16 fail their checksums"):
        train(config)
    assert not run.model.exists()


def failing_save(original, fails):
    """torch.save that writes part of the file and then fails as a full disk does, where `fails(path)`."""

    def save(obj, path, *args, **kwargs):
        if fails(str(path)):
            with open(path, "wb") as file:
                file.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return original(obj, path, *args, **kwargs)

    return save


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint_and_stops_with_one_line(reference_run, tmp_path, monkeypatch):
    config, path = copy_run_config(reference_run, tmp_path)
    run = RunFolder(config.output_dir)
    monkeypatch.setattr(torch, "save", failing_save(torch.save, lambda p: "checkpoint-8" in p and p.endswith("optimizer.pt")))
    result = CliRunner().invoke(app, ["train", str(path)])
    assert_one_line_error(result, f"cannot write {run.staging / 'checkpoint-8' / 'optimizer.pt'}: No space left on device; "
                                  f"checkpoint-8 was not saved; the last complete checkpoint ({run.root / 'checkpoint-4'}) is intact",
                          code=1, other_lines=True)  # after the progress bars
    assert [c.name for c in run.checkpoints()] == ["checkpoint-4"] and checksum_problem(run.root / "checkpoint-4") is None
    assert not (run.staging / "checkpoint-8").exists() and not run.model.exists()

    monkeypatch.undo()  # space freed: the same command resumes
    assert_same_run(run.root, train(config), reference_run)


def test_a_full_disk_while_writing_the_final_model_leaves_no_partial_model(reference_run, tmp_path, monkeypatch):
    import transformers.modeling_utils as modeling_utils

    config, path = copy_run_config(reference_run, tmp_path, max_steps=4, eval_interval=0)
    run = RunFolder(config.output_dir)
    original = modeling_utils.safe_save_file

    def full_disk(tensors, filename, *args, **kwargs):
        if ".model.tmp-" in str(filename):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
        return original(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(modeling_utils, "safe_save_file", full_disk)
    result = CliRunner().invoke(app, ["train", str(path)])
    assert_one_line_error(result, "No space left on device; nothing was written to " + str(run.model), code=1, other_lines=True)
    assert not run.model.exists() and not list(run.root.glob(".model.tmp-*"))
    assert checksum_problem(run.root / "checkpoint-4") is None

    monkeypatch.undo()
    final = train(config)  # no step left to train: the model is the checkpoint's
    checkpoint = load_file(run.root / "checkpoint-4" / "model.safetensors")
    assert all(torch.equal(tensor, checkpoint[name]) for name, tensor in load_file(final / "model.safetensors").items())


def test_a_run_that_fails_before_its_first_step_leaves_nothing(reference_run, tmp_path):
    config, _ = copy_run_config(reference_run, tmp_path, output_dir=str(tmp_path / "runs" / "new"))
    config = config.model_copy(update={"data": config.data.model_copy(update={"files": [str(tmp_path / "nothing" / "*.jsonl")]})})
    path = write_config(config, tmp_path / "empty-glob.yaml")
    result = CliRunner().invoke(app, ["train", str(path)])
    assert_one_line_error(result, f"data file {tmp_path / 'nothing' / '*.jsonl'}: no such file", code=2)
    assert not (tmp_path / "runs").exists()

    (tmp_path / "runs" / "new").mkdir(parents=True)  # a folder the user made: left as it was, empty
    assert CliRunner().invoke(app, ["train", str(path)]).exit_code == 2
    assert list((tmp_path / "runs" / "new").iterdir()) == []


def test_every_checkpoint_records_checksums_of_all_its_files(reference_run):
    _, _, run_dir = reference_run
    checkpoint = RunFolder(run_dir).last_checkpoint()
    listed = {line.split("  ", 1)[1] for line in (checkpoint / CHECKSUMS_FILE).read_text().splitlines()}
    on_disk = {p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file()} - {CHECKSUMS_FILE}
    assert listed == on_disk and {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= listed
    result = subprocess.run(["sha256sum", "--check", "--quiet", CHECKSUMS_FILE], cwd=checkpoint, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_full_disk_while_logging_is_one_line_naming_the_last_checkpoint(reference_run, tmp_path, monkeypatch):
    from midus.train.trainer import RunCallback

    config, path = copy_run_config(reference_run, tmp_path)
    run = RunFolder(config.output_dir)
    on_log = RunCallback.on_log

    def full_disk(self, args, state, control, logs=None, **kwargs):
        if state.global_step == 6:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run.metrics))
        return on_log(self, args, state, control, logs=logs, **kwargs)

    monkeypatch.setattr(RunCallback, "on_log", full_disk)
    result = CliRunner().invoke(app, ["train", str(path)])
    assert_one_line_error(result, f"cannot write {run.metrics}: No space left on device; the last complete checkpoint "
                                  f"({run.root / 'checkpoint-4'}) is intact; run the same command again to resume",
                          code=1, other_lines=True)
    monkeypatch.undo()
    assert_same_run(run.root, train(config), reference_run)
