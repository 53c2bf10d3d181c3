"""One memory block of this tree against the same block at an earlier git revision: same weights, taking
turns in one process, the order rotating (training step, prefill, one decoded token with the KV cache;
then the memory layer alone, retrieval + pooling + HIVE projection on fixed heads' outputs, trained and
forward only), next to a full Llama block for scale. The model folder has relative imports only (it ships
as remote code), so the old copy is imported as its own package; the two must give the same outputs and
gradients (checked) before anything is timed.

    python benchmarks/memory_block_versions.py --against 6437a5a [--widths smol 1b] [--threads 1 2] [--out DIR]

Prints a table (milliseconds, medians; "old ÷ new" is the median of the round-by-round ratios, with
their IQR) and, with --out, writes memory_block_versions.{md,json} there.
"""

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import torch
from transformers import DynamicCache, LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

import midus.model
from memory_cost import interleaved
from midus.model.compat import CACHE_ARG
from midus.report import markdown_table, write_report_files

REPO = Path(__file__).resolve().parents[1]
MODEL_FOLDER = "src/midus/model"
WIDTHS = {"smol": dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3),
          "1b": dict(hidden_size=2048, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8)}
MEMORY = {"n_keys": 64, "topk": 32, "latent_dim": 64, "zero_init": "none"}
ROUNDS = {"train": 15, "prefill": 30, "decode": 300, "layer train": 15, "layer prefill": 30}
TOKENS = 256


def import_revision(revision: str, folder: Path):
    """The model package as it was at `revision`, imported as `midus_model_<revision>`."""
    name = f"midus_model_{revision.replace('-', '_').replace('.', '_')}"
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, MODEL_FOLDER], capture_output=True)
    if archive.returncode:
        raise SystemExit(f"error: no model folder at revision {revision!r}: {archive.stderr.decode().strip()}")
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    (folder / MODEL_FOLDER).rename(folder / name)
    sys.path.insert(0, str(folder))
    return importlib.import_module(name)


def blocks_of(width: str, old_package) -> tuple[dict, LlamaConfig]:
    llama = LlamaConfig(**WIDTHS[width], num_hidden_layers=1, vocab_size=128,
                        head_dim=WIDTHS[width]["hidden_size"] // WIDTHS[width]["num_attention_heads"])
    llama._attn_implementation = "sdpa"
    blocks = {"full": LlamaDecoderLayer(llama, 0)}
    for name, package in (("old", old_package), ("new", midus.model)):
        config = package.MidusConfig(**{k: v for k, v in llama.to_dict().items()
                                        if k not in ("model_type", "transformers_version")}, memory=MEMORY)
        config._attn_implementation = "sdpa"
        blocks[name] = package.MidusMemoryBlock(config, 0)
    torch.manual_seed(0)
    for parameter in blocks["new"].parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    blocks["old"].load_state_dict(blocks["new"].state_dict())
    return blocks, llama


def measure(width: str, threads: int, old_package) -> list[dict]:
    torch.set_num_threads(threads)
    blocks, llama = blocks_of(width, old_package)
    rope = LlamaRotaryEmbedding(llama)
    x = torch.randn(1, TOKENS, llama.hidden_size, requires_grad=True)
    context = {"attention_mask": None, "position_embeddings": rope(x, torch.arange(TOKENS)[None])}
    token = torch.randn(1, 1, llama.hidden_size)
    next_position = {"attention_mask": None, "position_embeddings": rope(token, torch.tensor([[TOKENS]]))}
    caches = {name: DynamicCache() for name in blocks}
    for name, block in blocks.items():
        with torch.no_grad():
            block(x, **context, **{CACHE_ARG: caches[name]})

    def train(name):
        blocks[name].zero_grad(set_to_none=True)
        x.grad = None
        blocks[name](x, **context).sum().backward()

    @torch.no_grad()
    def prefill(name):
        return blocks[name](x, **context)

    @torch.no_grad()
    def decode(name):
        out = blocks[name](token, **next_position, **{CACHE_ARG: caches[name]})
        caches[name].crop(-1)
        return out

    # the memory layer alone (the full block, for scale, as in train and prefill)
    heads_output = torch.randn(1, TOKENS, llama.num_attention_heads, llama.head_dim, requires_grad=True)

    def layer_train(name):
        if name == "full":
            return train(name)
        blocks[name].zero_grad(set_to_none=True)
        heads_output.grad = None
        blocks[name].memory(heads_output).sum().backward()

    @torch.no_grad()
    def layer_prefill(name):
        return prefill(name) if name == "full" else blocks[name].memory(heads_output)

    torch.testing.assert_close(prefill("new"), prefill("old"))
    torch.testing.assert_close(decode("new"), decode("old"))
    gradients = {}
    for name in ("new", "old"):
        train(name)
        gradients[name] = [x.grad, *(p.grad for p in blocks[name].parameters())]
    torch.testing.assert_close(gradients["new"], gradients["old"], rtol=1e-4, atol=1e-4)  # sums in other orders
    rows = []
    for phase, run in (("train", train), ("prefill", prefill), ("decode", decode), ("layer train", layer_train),
                       ("layer prefill", layer_prefill)):
        times = interleaved({name: (run, (name,)) for name in blocks}, ROUNDS[phase], warmup=3)
        ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
        speedup = [old / new for old, new in zip(times["old"], times["new"])]
        q1, median, q3 = statistics.quantiles(speedup, n=4)
        rows.append({"width": width, "threads": threads, "phase": phase, "rounds": ROUNDS[phase],
                     **{f"{name}_ms": value for name, value in ms.items()},
                     "old_over_full": ms["old"] / ms["full"], "new_over_full": ms["new"] / ms["full"],
                     "old_over_new": median, "old_over_new_iqr": [q1, q3]})
        print(f"{width}, {threads} thread(s), {phase}: old ÷ new {median:.3f} [{q1:.3f}–{q3:.3f}]", flush=True)
    return rows


def markdown(results: dict) -> str:
    rows = [[r["width"], str(r["threads"]), r["phase"], f"{r['full_ms']:.3f}", f"{r['old_ms']:.3f}", f"{r['new_ms']:.3f}",
             f"{r['old_over_full']:.3f}", f"{r['new_over_full']:.3f}",
             f"**{r['old_over_new']:.3f}** [{r['old_over_new_iqr'][0]:.3f}–{r['old_over_new_iqr'][1]:.3f}]"]
            for r in results["rows"]]
    header = ["width", "threads", "phase", "full block ms", f"memory block at {results['against']} ms",
              "memory block now ms", "old ÷ full", "now ÷ full", "old ÷ now, per round [IQR]"]
    return "\n".join([f"One memory block now against {results['against']}, same weights, in one process, "
                      f"1 × {TOKENS} tokens (decode: one token after them), medians of the rounds "
                      f"({', '.join(f'{p} {n}' for p, n in ROUNDS.items())}); torch {results['torch']}. "
                      "The layer rows time the memory layer alone (retrieval, pooling and HIVE projection on "
                      "fixed heads' outputs) against the full block's training step or forward.", "",
                      *markdown_table(header, rows, "lllrrrrrr")]) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="a git revision of this repository")
    parser.add_argument("--widths", nargs="+", choices=list(WIDTHS), default=list(WIDTHS))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, help="write memory_block_versions.{md,json} here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        old_package = import_revision(args.against, Path(folder))
        rows = [row for width in args.widths for threads in args.threads for row in measure(width, threads, old_package)]
    results = {"against": args.against, "torch": torch.__version__, "rows": rows}
    print(markdown(results))
    if args.out:
        write_report_files(args.out, {"memory_block_versions.md": markdown(results),
                                      "memory_block_versions.json": json.dumps(results, indent=1)})


if __name__ == "__main__":
    main()
