"""Serving a model folder with vLLM: `midus serve` and the `vllm.LLM(...)` arguments.

vLLM runs a MIDUS folder through its Transformers backend (`model_impl="transformers"`), which
imports the modeling code shipped in the folder (hence `trust_remote_code`): vLLM's attention and
paged KV cache replace transformers' in every block, its fused q/k/v and RMSNorm kernels replace
ours, and the memory layers (product keys, banks, HIVE) run as written, loaded by vLLM's default
weight loader. A plain or DUS-grown Llama folder is served by vLLM's native Llama.
"""

import os
import shutil
import sys
from pathlib import Path

from .checkpoint import load_config, resolve
from .errors import UsageError

VLLM_MISSING = ("midus serve needs vLLM in this environment: `pip install vllm` on a GPU machine, or the CPU build "
                "in its own environment (README, 'Serving with vLLM')")


def has_memory_blocks(config) -> bool:
    return config.model_type == "midus" and any(kind != "decoder" for kind in config.layer_kinds)


def check_parallelism(config, model: str, tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1) -> None:
    """What vLLM cannot do with memory blocks, refused in one line each."""
    if not has_memory_blocks(config):
        return
    if tensor_parallel_size > 1:
        raise UsageError(
            f"{model}: tensor parallelism (size {tensor_parallel_size}) cannot serve memory blocks: vLLM shards q/k/v "
            "by heads, but each memory layer's product keys, banks and HIVE projection are loaded whole on every rank "
            "and read every head of the token; serve it with tensor parallel size 1 (replicas: --data-parallel-size)")
    if pipeline_parallel_size > 1:
        raise UsageError(
            f"{model}: pipeline parallelism (size {pipeline_parallel_size}) of memory blocks is untested (a shared "
            "bank lives outside the layers vLLM splits); serve it with pipeline parallel size 1")


def engine_args(model: str, tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1) -> dict:
    """The keyword arguments of `vllm.LLM` (and flags of `vllm serve`) that load `model`."""
    config = load_config(model)
    check_parallelism(config, model, tensor_parallel_size, pipeline_parallel_size)
    args = dict(model=resolve(model), tensor_parallel_size=tensor_parallel_size,
                pipeline_parallel_size=pipeline_parallel_size)
    if config.model_type == "midus":
        args.update(model_impl="transformers", trust_remote_code=True)
    return args


def flag_value(arguments: list[str], *names: str) -> int:
    """The integer value of a `--name N` / `--name=N` flag among vLLM's arguments (1 if absent)."""
    for index, argument in enumerate(arguments):
        name, equals, value = argument.partition("=")
        if name in names:
            value = value if equals else (arguments[index + 1] if index + 1 < len(arguments) else "")
            try:
                return int(value)
            except ValueError:
                raise UsageError(f"{name}: expected an integer, got {value!r}") from None
    return 1


def vllm_executable() -> str:
    """vLLM's command, from this Python's environment (activated or not), else from PATH."""
    beside = Path(sys.executable).parent / "vllm"
    executable = str(beside) if beside.is_file() else shutil.which("vllm")
    if executable is None:
        raise UsageError(VLLM_MISSING)
    return executable


def serve_command(model: str, vllm_arguments: list[str]) -> list[str]:
    """`vllm serve FOLDER` with MIDUS's engine arguments, then the user's own vLLM flags."""
    args = engine_args(model, flag_value(vllm_arguments, "--tensor-parallel-size", "-tp"),
                       flag_value(vllm_arguments, "--pipeline-parallel-size", "-pp"))
    executable = vllm_executable()
    command = [executable, "serve", args["model"]]
    if "model_impl" in args:
        command += ["--model-impl", args["model_impl"], "--trust-remote-code"]
    return command + vllm_arguments


def serve(model: str, vllm_arguments: list[str]) -> None:
    """Replace this process by vLLM's OpenAI-compatible server."""
    command = serve_command(model, vllm_arguments)
    os.execv(command[0], command)
