"""FSDP2 (`fsdp: true`) over gloo on two CPU processes: the same losses and final model as one process
without FSDP, sharded checkpoints through torch.distributed.checkpoint, exact resume after kill -9.

Three torchrun launches in all: one trains every case in turn (the runs share the process group),
one is killed mid-run, one resumes it."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from midus import Recipe
from midus.train import train
from midus.train.rundir import RunFolder
from midus.growth import upscale_to_folder

from model_helpers import TINY_MEMORY, TINY_PKM, write_family_base
from test_preemption import wait_for_step, worker_pids
from test_resume import logged
from train_helpers import tiny_config, write_config

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TRAIN_EACH = textwrap.dedent("""\
    import sys
    from midus.train import TrainConfig, train
    from midus.train.run import end_process_group
    for path in sys.argv[1:]:
        train(TrainConfig.from_yaml(path))
    end_process_group()
""")


@pytest.fixture(scope="module")
def tiny_shared_bank(tiny_base, tmp_path_factory):
    """MIDUS with one latent bank shared by its 2 memory blocks, grown from a base with tied embeddings."""
    root = tmp_path_factory.mktemp("fsdp-shared-bank")
    base = write_family_base(root / "qwen2", "qwen2", AutoTokenizer.from_pretrained(tiny_base))
    recipe = Recipe.parse({"base": str(base), "method": "midus", "new_blocks": 2, "dtype": "float32",
                           "memory": {**TINY_MEMORY, "share_bank": True}})
    return upscale_to_folder(recipe, root / "midus")


@pytest.fixture(scope="module")
def tiny_pkm(tiny_base, tmp_path_factory):
    """The tiny base grown by 2 product-key-memory blocks."""
    recipe = Recipe.parse({"base": str(tiny_base), "method": "pkm", "new_blocks": 2, "dtype": "float32", "memory": TINY_PKM})
    return upscale_to_folder(recipe, tmp_path_factory.mktemp("fsdp-pkm") / "pkm")


@pytest.fixture(scope="module")
def cases(reference_run, tiny_shared_bank, tiny_pkm, tiny_grown_llama, corpus, tmp_path_factory):
    """{case: (config without FSDP, its final model on one process, the same config with FSDP)}, the
    FSDP runs trained by one 2-process launch: MIDUS (the session's reference run); MIDUS with a
    shared bank, tied embeddings and gradient checkpointing; pkm blocks; LLaMA Pro training only its
    new blocks."""
    root = tmp_path_factory.mktemp("fsdp")
    data = {"files": [str(corpus)], "cache_dir": str(root / "cache")}
    plain = {
        "midus": reference_run[0],
        "shared-bank": tiny_config(tiny_shared_bank, root / "shared-bank" / "run", data, max_steps=4, gradient_checkpointing=True),
        "pkm": tiny_config(tiny_pkm, root / "pkm" / "run", data, max_steps=4),
        "new-blocks": tiny_config(tiny_grown_llama, root / "new-blocks" / "run", data, max_steps=4, trainable="new-blocks"),
    }
    sharded = {case: config.model_copy(update={"fsdp": True, "output_dir": str(root / case / "fsdp")})
               for case, config in plain.items()}
    paths = [write_config(config, root / f"{case}.yaml") for case, config in sharded.items()]
    (root / "train_each.py").write_text(TRAIN_EACH)
    result = subprocess.run([*TORCHRUN, str(root / "train_each.py"), *map(str, paths)], capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    finals = {"midus": reference_run[1], **{case: train(plain[case]) for case in ("shared-bank", "pkm", "new-blocks")}}
    return {case: (plain[case], finals[case], sharded[case]) for case in plain}


@pytest.mark.parametrize("case", ["midus", "shared-bank", "pkm", "new-blocks"])
def test_two_fsdp_processes_log_the_losses_and_write_the_model_of_one_plain_process(cases, case):
    """Tolerances: 1e-4 on every logged loss, 1e-5 on every weight (float32 sums in another order)."""
    config, final, fsdp = cases[case]
    run = RunFolder(fsdp.output_dir)
    ours, theirs = logged(run.root), logged(config.output_dir)
    assert [r[:2] for r in ours] == [r[:2] for r in theirs] and len(ours) > config.max_steps
    for (step, kind, a), (_, _, b) in zip(ours, theirs):
        assert abs(a - b) <= 1e-4, (step, kind, a, b)
    lrs = [{k: v for k, v in r.items() if k.startswith("lr/")} for r in RunFolder(config.output_dir).records() if r["kind"] == "train"]
    assert [{k: v for k, v in r.items() if k.startswith("lr/")} for r in run.records() if r["kind"] == "train"] == lrs

    # one normal HF folder, as without FSDP: the same files, the same config, the same tensors
    assert sorted(p.name for p in run.model.iterdir()) == sorted(p.name for p in final.iterdir())
    assert (run.model / "config.json").read_text() == (final / "config.json").read_text()
    ours, theirs = load_file(run.model / "model.safetensors"), load_file(final / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-5, msg=name)
    if case == "new-blocks":  # the frozen original blocks, sharded with the trained ones, are untouched
        before = load_file(config.model + "/model.safetensors")
        layer_map = json.loads((final / "config.json").read_text())["layer_map"]
        new = tuple(f"model.layers.{i}." for i, entry in enumerate(layer_map) if entry["new"])
        frozen = [name for name in before if not name.startswith(new)]
        assert frozen and all(torch.equal(ours[name], before[name]) for name in frozen)
        assert any(not torch.equal(ours[name], before[name]) for name in before if name.startswith(new))

    # the checkpoints are torch.distributed.checkpoint's: one shard of the model and of the optimizer per process
    checkpoint = run.last_checkpoint()
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert sorted(p.name for p in (checkpoint / part).iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not (checkpoint / "model.safetensors").exists()


def test_kill_9_of_both_ranks_then_the_same_command_ends_bitwise_as_the_unbroken_fsdp_run(cases, tmp_path):
    _, _, unbroken = cases["midus"]
    config = unbroken.model_copy(update={"output_dir": str(tmp_path / "run")})
    command = [*TORCHRUN, "-m", "midus", "train", str(write_config(config, tmp_path / "train.yaml"))]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    wait_for_step(process, tmp_path / "run" / "metrics.jsonl", random.Random().randint(5, 11))  # resumes from 4 or 8
    workers = worker_pids(process.pid)
    assert sorted(workers) == [0, 1]
    for pid in workers.values():
        os.kill(pid, signal.SIGKILL)
    process.communicate()
    run = RunFolder(config.output_dir)
    assert process.returncode != 0 and run.last_checkpoint() is not None and not run.model.exists()

    result = subprocess.run(command, capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert logged(run.root) == logged(unbroken.output_dir)
    ours, theirs = load_file(run.model / "model.safetensors"), load_file(RunFolder(unbroken.output_dir).model / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[name], theirs[name]) for name in theirs)

    # killed once more, after the last checkpoint and before the final model: the sharded checkpoint is restored
    os.replace(run.model, tmp_path / "first-model")
    result = subprocess.run(command, capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert logged(run.root) == logged(unbroken.output_dir)
    assert (run.model / "model.safetensors").read_bytes() == (tmp_path / "first-model" / "model.safetensors").read_bytes()

    ids = torch.randint(5, 500, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.save(ids, tmp_path / "ids.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(run.model)!r}, trust_remote_code=True)
        assert "midus" not in sys.modules
        with torch.no_grad():
            torch.save(model(torch.load({str(tmp_path / 'ids.pt')!r})).logits, {str(tmp_path / 'logits.pt')!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(run.model)(ids).logits
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("ends", ["well", "in an error"])
def test_midus_train_destroys_its_process_group_before_the_process_exits(ends, tmp_path, monkeypatch):
    """Left to the interpreter's teardown, gloo's threads can abort a rank that ended well (SIGABRT,
    pytorch#190489): the command destroys the group itself, however the run ended."""
    import midus.train
    from typer.testing import CliRunner
    from midus.cli import app
    from midus.errors import MidusError

    def run_in_a_group(config, overwrite=False):
        torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        torch.distributed.barrier()
        if ends != "well":
            raise MidusError("the run failed")
        return tmp_path / "model"

    monkeypatch.setattr(midus.train, "train", run_in_a_group)
    config = write_config(tiny_config(tmp_path / "base", tmp_path / "run", {"files": [str(tmp_path / "corpus.txt")]}), tmp_path / "train.yaml")
    try:
        result = CliRunner().invoke(app, ["train", str(config)])
    finally:
        left = torch.distributed.is_initialized()
        if left:  # not to leave it to the next test
            torch.distributed.destroy_process_group()
    assert (result.exit_code == 0) == (ends == "well"), result.output
    assert ("wrote" in result.output) == (ends == "well") and not left
