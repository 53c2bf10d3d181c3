"""`midus serve`: the `vllm serve` command it runs, and what it refuses before starting vLLM."""

import pytest
from transformers import AutoTokenizer
from typer.testing import CliRunner

from cli_helpers import assert_one_line_error
from midus import serve
from midus.checkpoint import save_model
from midus.cli import app
from model_helpers import TINY_MEMORY, grow


@pytest.fixture(scope="module")
def midus_folder(tiny_base, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve") / "midus"
    save_model(grow(tiny_base, "midus", new_blocks=2, memory=TINY_MEMORY), AutoTokenizer.from_pretrained(tiny_base), folder)
    return folder


def test_the_command_is_vllm_serve_through_the_transformers_backend(midus_folder, tiny_base, monkeypatch):
    monkeypatch.setattr(serve, "vllm_executable", lambda: "/env/bin/vllm")
    assert serve.serve_command(str(midus_folder), ["--port", "8001", "--data-parallel-size", "2"]) == [
        "/env/bin/vllm", "serve", str(midus_folder), "--model-impl", "transformers", "--trust-remote-code",
        "--port", "8001", "--data-parallel-size", "2"]
    # a plain (or DUS-grown) Llama is vLLM's native Llama, tensor parallel included
    assert serve.serve_command(str(tiny_base), ["-tp", "2"]) == ["/env/bin/vllm", "serve", str(tiny_base), "-tp", "2"]
    assert serve.engine_args(str(midus_folder)) == {
        "model": str(midus_folder), "tensor_parallel_size": 1, "pipeline_parallel_size": 1,
        "model_impl": "transformers", "trust_remote_code": True}


@pytest.mark.parametrize("flags, fragment", [
    (["--tensor-parallel-size", "2"], "tensor parallelism (size 2) cannot serve memory blocks"),
    (["-tp=4"], "tensor parallelism (size 4) cannot serve memory blocks"),
    (["--pipeline-parallel-size", "2"], "pipeline parallelism (size 2) of memory blocks is untested"),
    (["--tensor-parallel-size", "two"], "--tensor-parallel-size: expected an integer, got 'two'"),
])
def test_what_vllm_cannot_do_with_memory_blocks_is_refused(midus_folder, flags, fragment):
    result = CliRunner().invoke(app, ["serve", str(midus_folder), *flags])
    assert_one_line_error(result, fragment, code=2)


def test_without_vllm_it_says_how_to_install_it(midus_folder, monkeypatch):
    monkeypatch.setattr(serve.shutil, "which", lambda name: None)
    monkeypatch.setattr(serve.sys, "executable", "/nowhere/bin/python")
    result = CliRunner().invoke(app, ["serve", str(midus_folder)])
    assert_one_line_error(result, "midus serve needs vLLM in this environment", code=2)
