"""The `midus` command line: one verb per stage of the pipeline."""

import functools
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
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(error.exit_code) from None

    return wrapper


@app.command()
@one_line_errors
def upscale(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML (see recipes/)")],
    out_dir: Annotated[Path, typer.Argument(help="new folder for the grown checkpoint")],
):
    """Grow a base model (hub id or folder) by a recipe into OUT_DIR."""
    from .recipe import Recipe
    from .upscale import upscale_to_folder

    parsed = Recipe.from_yaml(recipe)
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
    from .checkpoint import check_out_dir
    from .tiny import write_tiny_llama

    check_out_dir(out_dir)
    write_tiny_llama(out_dir, layers=layers, hidden_size=hidden_size, heads=heads, kv_heads=kv_heads,
                     intermediate_size=2 * hidden_size, seed=seed)
    typer.echo(f"wrote {out_dir}")



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
    Multi-GPU: torchrun --nproc_per_node N --no-python midus train CONFIG."""
    from .train import TrainConfig, train as run_training
    from .train.config import parse_override

    overrides = dict(parse_override(text) for text in set_)
    named = {"model": model, "output_dir": output_dir, "lr": lr, "seed": seed, "max_steps": max_steps, "max_tokens": max_tokens}
    overrides.update({key: value for key, value in named.items() if value is not None})
    if max_steps is not None or max_tokens is not None:  # one budget replaces the other
        overrides.setdefault("max_tokens" if max_steps is not None else "max_steps", None)
    final = run_training(TrainConfig.from_yaml(config, overrides), overwrite=overwrite)
    typer.echo(f"wrote {final}")
