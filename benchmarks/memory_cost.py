"""What a MIDUS memory block costs next to a LLaMA Pro block: training step, prefill, decode, memory.

1. Added cost per block, MIDUS ÷ LLaMA Pro, at two widths, with 1 and 2 threads: `midus bench` (models
   taking turns in one process, in rounds) of a random-weight base, the base + K MIDUS memory blocks and
   the base + K LLaMA Pro blocks, all grown by the project's own recipes on a config-only base:
   - SmolLM2-135M width: d 576, 9 heads, 3 KV heads, d_ff 1536; 6 blocks + 4;
   - Llama-3.2-1B width: d 2048, 32 heads, 8 KV heads, d_ff 8192; 2 blocks + 1.
   Few layers and a small vocabulary keep it cheap: the added cost subtracts the base run by run.
   Next to it, the FLOP ratio (forward multiply-adds of the two blocks) and the parameter ratio.
   With --compile, a second bench run per width and thread count times inference compiled
   (`bench --compile`: torch.compile(fullgraph=True) of the forward, inductor, a static KV cache); its
   prefill and decode rows stand next to the eager ones (its training step, eager on 2 tokens, is not read).
2. Retrieval + pooling vs the PyPI `product-key-memory` layer doing the same work, at 1B width: 32 heads,
   n = 64 sub-keys per half, top-k 32, LayerNorm on each query half (its default), the same value
   table, HIVE's latent bank [n*n, r = 64] (and, second, a wide [n*n, d] table). Its query projection
   `to_queries` is replaced by the identity, so both start from the same [T, 2048] queries and the
   timing holds retrieval and pooling only; both pick the same slots with the same weights (checked).
   It runs after the bench runs, on a heap they warmed: in a fresh process glibc hands its 32 MiB
   score grids back to the OS after each call and the page faults of fetching them again inflate its
   time by a third (2.15x instead of 1.6x here; MALLOC_MMAP_THRESHOLD_ set high gives the warm figure).
3. Where a block's time goes, at both widths and each thread count: a full block, a memory block, its
   attention part alone and its floor (the attention part + the HIVE projection + the residual: the memory
   block with retrieval and pooling free), taking turns, without a model around them.
4. Training memory of one block at 1B width: the bytes autograd keeps for the backward (saved
   tensors, counted once per storage), also under gradient checkpointing, and the bytes of weights,
   gradients and AdamW state.

    python benchmarks/memory_cost.py [--threads 1 2] [--rounds 7] [--compile] [--pytorch-path] [--out benchmarks/results]
    python benchmarks/memory_cost.py --from-json benchmarks/results/memory_cost.json   # table and plot again
    python benchmarks/memory_cost.py --sections product_key_memory   # one section again, the rest kept from --out

Writes memory_cost.md, memory_cost.json and memory_cost.png (the ratios, bars by path) to --out.
"""

import argparse
import contextlib
import copy
import datetime
import itertools
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache, LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from midus.bench import BenchSettings, bench
from midus.model import MidusConfig, MidusMemoryBlock
from midus.model.compat import CACHE_ARG
from midus.model.hml import ProductKeys
from midus.model.retrieval import normalize_query, staircase
from midus.model.values import pool
from midus.plotting import save_figure, subplots

N_KEYS, TOPK, LATENT = 64, 32, 64
WIDTHS = {
    "SmolLM2-135M": {"shape": dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                                   num_key_value_heads=3), "layers": 6, "new_blocks": 4},
    "Llama-3.2-1B": {"shape": dict(hidden_size=2048, intermediate_size=8192, num_attention_heads=32,
                                   num_key_value_heads=8), "layers": 2, "new_blocks": 1},
}
GOALS = {  # MIDUS ÷ LLaMA Pro added cost per block, from issue 13
    ("SmolLM2-135M", "train_step_s"): ("≤ parameter ratio", "params"),
    ("SmolLM2-135M", "decode_s_per_token"): ("≤ 0.5", 0.5),
    ("Llama-3.2-1B", "train_step_s"): ("≤ 1.15 × FLOP ratio", "flops"),
    ("Llama-3.2-1B", "prefill_s"): ("≤ 1.15 × FLOP ratio", "flops"),
    ("Llama-3.2-1B", "decode_s_per_token"): ("≤ 0.3", 0.3),
}
SECTIONS = ("added_cost", "product_key_memory", "breakdown", "training_memory")  # of a run, in its order
PHASES = {"train_step_s": "training step", "prefill_s": "prefill", "decode_s_per_token": "decode (per token)"}
INFERENCE = ("prefill_s", "decode_s_per_token")


# ------------------------------------------------------------------------------ 1. added cost per block
def block_flops(shape: dict, context: float) -> tuple[float, float]:
    """Forward multiply-adds per token of a full Llama block and of a memory block, attending to
    `context` earlier positions on average."""
    d, d_ff, heads, kv_heads = (shape[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                                    "num_key_value_heads"))
    d_h = d // heads
    qkv = d * heads * d_h + 2 * d * kv_heads * d_h
    attention = 2 * heads * d_h * context
    full = qkv + heads * d_h * d + 3 * d * d_ff + attention
    pairs = sum((last - first) * width for first, last, width in staircase(TOPK))
    memory = qkv + attention + heads * 2 * N_KEYS * d_h // 2 + heads * pairs / 2 + heads * TOPK * LATENT + heads * LATENT * d
    return full, memory


def write_models(folder: Path, width: str) -> list[str]:
    spec = WIDTHS[width]
    config = LlamaConfig(**spec["shape"], num_hidden_layers=spec["layers"], vocab_size=2048, max_position_embeddings=2048,
                         head_dim=spec["shape"]["hidden_size"] // spec["shape"]["num_attention_heads"])
    base = folder / f"{width}-base"
    config.save_pretrained(base)  # config only: bench gives it seeded random weights
    recipes = []
    for method in ("midus", "llama-pro"):
        recipe = {"base": str(base), "method": method, "new_blocks": spec["new_blocks"], "placement": "distributed",
                  "dtype": "float32"}
        if method == "midus":
            recipe["memory"] = {"n_keys": N_KEYS, "topk": TOPK, "latent_dim": LATENT}
        path = folder / f"{width}-{method}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        recipes.append(str(path))
    return [str(base), *recipes]


def per_round_ratios(midus, pro, metrics) -> dict:
    """Ratio of the medians (the headline) and the quartiles of the run-by-run ratios (the spread)."""
    out = {}
    for metric in metrics:
        mine, theirs = getattr(midus.added_per_block, metric), getattr(pro.added_per_block, metric)
        rounds = [a / b for a, b in zip(mine.samples, theirs.samples) if b > 0]
        q1, _, q3 = statistics.quantiles(rounds, n=4, method="inclusive") if len(rounds) > 1 else rounds * 3
        out[metric] = {"ratio": mine.median / theirs.median, "round_q1": q1, "round_q3": q3,
                       "midus_ms": 1e3 * mine.median, "midus_iqr_ms": [1e3 * mine.q1, 1e3 * mine.q3],
                       "llama_pro_ms": 1e3 * theirs.median, "llama_pro_iqr_ms": [1e3 * theirs.q1, 1e3 * theirs.q3]}
    return out


@contextlib.contextmanager
def memory_path(path: str):
    """The memory layer's CPU kernels ("kernels", the default) or its PyTorch reference path ("pytorch")."""
    before = os.environ.get("MIDUS_CPU_KERNELS")
    os.environ["MIDUS_CPU_KERNELS"] = "0" if path == "pytorch" else "1"
    try:
        yield
    finally:
        os.environ.pop("MIDUS_CPU_KERNELS") if before is None else os.environ.update(MIDUS_CPU_KERNELS=before)


def added_costs(folder: Path, threads: list[int], rounds: int, settings: dict, compiled: bool,
                pytorch_path: bool) -> list[dict]:
    rows = []
    for width, spec in WIDTHS.items():
        base, midus, pro = write_models(folder, width)
        for count in threads:
            run = BenchSettings(threads=count, repeats=rounds, **settings)
            flops = {"train_step_s": block_flops(spec["shape"], (run.train_seq_len + 1) / 2),
                     "prefill_s": block_flops(spec["shape"], (run.prefill_len + 1) / 2),
                     "decode_s_per_token": block_flops(spec["shape"], run.prefill_len + run.decode_tokens / 2)}
            common = {"width": width, "shape": spec["shape"], "base_blocks": spec["layers"],
                      "new_blocks": spec["new_blocks"], "threads": count,
                      "flop_ratio": {m: memory / full for m, (full, memory) in flops.items()}}
            # eager with the kernels; the PyTorch path (the reference) for comparison; compiled: inference
            # only (its training step, eager on 2 tokens, is not read)
            variants = [("kernels", "eager", run, PHASES)]
            if pytorch_path:
                variants.append(("pytorch", "eager", run, PHASES))
            if compiled:
                variants.append(("kernels", "compiled", run.model_copy(update={"compile": True, "train_seq_len": 2}),
                                 INFERENCE))
            for path, inference, settings_, metrics in variants:
                with memory_path(path):
                    report = bench([base, midus, pro], settings_, reference=pro)
                models = {m.name: m for m in report.models}
                row = {**common, "path": path, "inference": inference,
                       "param_ratio": models[midus].params_added / models[pro].params_added,
                       "phases": per_round_ratios(models[midus], models[pro], metrics),
                       "bench_markdown": report.to_markdown()}
                rows.append(row)
                print(f"{width}, {count} thread(s), {path}, {inference}: " + ", ".join(
                    f"{PHASES[m]} {p['ratio']:.2f}" for m, p in row["phases"].items()), flush=True)
    return rows


# ------------------------------------------------------------------------------ 2. vs product-key-memory
def interleaved(cases: dict, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds of each case `fn(*inputs)`, taking turns in rounds, the order rotating from round to round (as
    `midus bench` does): a fixed order times the case after a big one slower (5% in a prefill, measured)."""
    for fn, inputs in cases.values():
        for _ in range(warmup):
            fn(*inputs)
    names = list(cases)
    times = {name: [] for name in names}
    for round_ in range(repeats):
        for step in range(len(names)):
            name = names[(round_ + step) % len(names)]
            fn, inputs = cases[name]
            start = time.perf_counter()
            fn(*inputs)
            times[name].append(time.perf_counter() - start)
    return times


def forward_backward(module_fn, module: nn.Module):
    def run(x):
        x.grad = None
        module.zero_grad(set_to_none=True)
        module_fn(x).float().sum().backward()

    return run


def against_product_key_memory(tokens: int, repeats: int) -> dict:
    from product_key_memory import PKM

    d, heads = 2048, 32
    torch.manual_seed(0)

    def their_layer(value_dim):
        layer = PKM(dim=d, heads=heads, num_keys=N_KEYS, topk=TOPK, dim_head=d // heads // 2)
        layer.to_queries = nn.Identity()  # queries come in ready-made, as an HML's do
        layer.values = nn.EmbeddingBag(N_KEYS**2, value_dim, mode="sum")  # the value table under test
        nn.init.normal_(layer.values.weight, std=value_dim**-0.5)
        return layer

    theirs = {"n^2 x r": their_layer(LATENT), "n^2 x d": their_layer(d)}
    keys = ProductKeys(heads, d // heads, N_KEYS, TOPK)
    with torch.no_grad():  # the same sub-keys: theirs are [h, n, 2, d/2], ours [h, 2, n, d/2]
        keys.keys.copy_(theirs["n^2 x r"].keys.permute(0, 2, 1, 3))
        theirs["n^2 x d"].keys.copy_(theirs["n^2 x r"].keys)

    def ours(table, keys=keys):
        """HIVE's pooling with a latent table (one bag per head: z_h), the `shared` variant's with a wide
        one (heads summed: one bag of H*k rows per token, as theirs)."""
        per_head = table.shape[1] < d

        def run(queries):
            # their feature order is (half, head, dim), ours (head, half, dim); LayerNorm per half as theirs
            halves = queries.view(-1, 2, heads, d // heads // 2).transpose(1, 2)
            slots, weights = keys(normalize_query(halves, "layer").flatten(2))
            if per_head:
                return pool(table, slots.flatten(0, 1), weights.flatten(0, 1)).view(-1, heads, table.shape[1])
            return pool(table, slots.flatten(1), weights.flatten(1))

        return run

    queries = torch.randn(1, tokens, d, requires_grad=True)
    # the same work: per-head pools summed equal theirs (float64: near-ties at the k-th slot cannot flip)
    keys64 = copy.deepcopy(keys).double()
    with torch.no_grad():
        for layer in theirs.values():
            layer64 = copy.deepcopy(layer).double()
            mine = ours(layer64.values.weight, keys64)(queries.double())
            torch.testing.assert_close(mine.sum(1) if mine.dim() == 3 else mine, layer64(queries.double())[0])

    def on_path(run, path):
        def timed_run(x):
            with memory_path(path):
                run(x)

        return timed_run

    ours_cases = {"ours": "kernels", "ours, PyTorch path": "pytorch"}
    cases = {}
    for table, layer in theirs.items():
        cases[f"product-key-memory, table {table}"] = (forward_backward(layer, layer), (queries,))
        for name, path in ours_cases.items():
            cases[f"{name}, table {table}"] = (on_path(forward_backward(ours(layer.values.weight), keys), path),
                                               (queries,))
    times = interleaved(cases, repeats)
    out = {"tokens": tokens, "seconds": {n: {"median": statistics.median(t), "min": min(t), "max": max(t)}
                                         for n, t in times.items()}}
    for table in theirs:
        for name in ours_cases:
            theirs_t, ours_t = times[f"product-key-memory, table {table}"], times[f"{name}, table {table}"]
            q1, _, q3 = statistics.quantiles([a / b for a, b in zip(theirs_t, ours_t)], n=4, method="inclusive")
            out[f"speed-up, {name}, table {table}"] = {"ratio": statistics.median(theirs_t) / statistics.median(ours_t),
                                                       "round_q1": q1, "round_q3": q3}
    return out


# ------------------------------------------------------------------------------ 3. where a block's time goes
def block_breakdown(tokens: int, rounds: int, threads: list[int]) -> list[dict]:
    """One full block, one memory block, the memory block's attention part alone (input norm, q/k/v,
    RoPE, attention: what a full block runs as well) and that part + the HIVE projection and the residual
    (the memory block with retrieval and pooling free), at both widths, taking turns in rounds: forward +
    backward on `tokens` tokens, a forward on them, and one decoded token after them with the KV cache.
    The last one over the full block is the floor of the memory block's ratio: no retrieval reaches below it."""
    rows = []
    for (width, spec), count in itertools.product(WIDTHS.items(), threads):
        torch.set_num_threads(count)
        llama = LlamaConfig(**spec["shape"], num_hidden_layers=1, vocab_size=128,
                            head_dim=spec["shape"]["hidden_size"] // spec["shape"]["num_attention_heads"])
        midus = MidusConfig(**{k: v for k, v in llama.to_dict().items() if k not in ("model_type", "transformers_version")},
                            memory={"n_keys": N_KEYS, "topk": TOPK, "latent_dim": LATENT})
        midus._attn_implementation = llama._attn_implementation = "sdpa"
        torch.manual_seed(0)
        full, memory = LlamaDecoderLayer(llama, 0), MidusMemoryBlock(midus, 0)

        def attention_part(x, **kwargs):
            return memory.self_attn(memory.input_layernorm(x), **kwargs)

        def floor(x, **kwargs):  # H * r = H * d_h at both widths: the heads' outputs stand in for the latents
            return x + memory.memory.values.proj(attention_part(x, **kwargs).flatten(-2))

        rope = LlamaRotaryEmbedding(llama)
        x = torch.randn(1, tokens, llama.hidden_size, requires_grad=True)
        token = torch.randn(1, 1, llama.hidden_size)
        context = {"position_embeddings": rope(x, torch.arange(tokens)[None]), "attention_mask": None}
        next_position = {"position_embeddings": rope(token, torch.tensor([[tokens]])), "attention_mask": None}

        def cases_of(name, run):
            cache = DynamicCache()
            with_cache = {CACHE_ARG if name in ("full block", "memory block") else "cache": cache}  # blocks: HF's name
            with torch.no_grad():
                run(x, **context, **with_cache)

            def train(_):
                out = run(x, **context)
                (out[0] if isinstance(out, tuple) else out).float().sum().backward()

            def prefill(_):
                with torch.no_grad():
                    run(x, **context)

            def decode(_):
                with torch.no_grad():
                    run(token, **next_position, **with_cache)
                cache.crop(-1)

            return {(name, "train"): (train, (None,)), (name, "prefill"): (prefill, (None,)),
                    (name, "decode"): (decode, (None,))}

        parts = {"full block": full, "memory block": memory, "attention part": attention_part, "floor": floor}
        cases = {case: run for name, part in parts.items() for case, run in cases_of(name, part).items()}
        times = interleaved(cases, rounds)
        for phase in ("train", "prefill", "decode"):
            ms = {name: 1e3 * statistics.median(times[(name, phase)]) for name in parts}
            rows.append({"width": width, "phase": phase, "tokens": tokens, "threads": count,
                         **{f"{n}_ms": v for n, v in ms.items()},
                         "memory_ratio": ms["memory block"] / ms["full block"],
                         "attention_ratio": ms["attention part"] / ms["full block"],
                         "floor_ratio": ms["floor"] / ms["full block"]})
    return rows


# ------------------------------------------------------------------------------ 4. training memory
def saved_bytes(block: nn.Module, call) -> int:
    """Bytes autograd keeps for the backward of one forward, each storage counted once."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = call()
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}
    del out
    return sum(size for ptr, size in storages.items() if ptr not in params)


def training_memory(tokens: int) -> dict:
    llama = LlamaConfig(**WIDTHS["Llama-3.2-1B"]["shape"], num_hidden_layers=1, vocab_size=128)
    midus = MidusConfig(**{k: v for k, v in llama.to_dict().items() if k not in ("model_type", "transformers_version")},
                        memory={"n_keys": N_KEYS, "topk": TOPK, "latent_dim": LATENT})
    midus._attn_implementation = llama._attn_implementation = "sdpa"
    blocks = {"full Llama block": LlamaDecoderLayer(llama, 0), "memory block": MidusMemoryBlock(midus, 0)}
    x = torch.randn(1, tokens, llama.hidden_size, requires_grad=True)
    position_embeddings = LlamaRotaryEmbedding(llama)(x, torch.arange(tokens)[None])
    out = {"tokens": tokens}
    for name, block in blocks.items():
        params = sum(p.numel() * p.element_size() for p in block.parameters())
        activations = saved_bytes(block, lambda: block(x, attention_mask=None, position_embeddings=position_embeddings))
        attention = saved_bytes(block.self_attn, lambda: block.self_attn(
            block.input_layernorm(x), attention_mask=None, position_embeddings=position_embeddings))
        # gradient checkpointing (`train: gradient_checkpointing: true`): what the block keeps, its input
        checkpointed = saved_bytes(block, lambda: checkpoint(
            lambda h: block(h, attention_mask=None, position_embeddings=position_embeddings), x, use_reentrant=True))
        out[name] = {"weights_grads_adamw_mib": 4 * params / 2**20, "saved_activations_mib": activations / 2**20,
                     "of_which_attention_mib": attention / 2**20, "checkpointed_mib": checkpointed / 2**20}
    full, memory = out["full Llama block"], out["memory block"]
    out["parameter_share"] = memory["weights_grads_adamw_mib"] / full["weights_grads_adamw_mib"]
    out["activation_share"] = memory["saved_activations_mib"] / full["saved_activations_mib"]
    return out


# ------------------------------------------------------------------------------ report
def goal_limit(row: dict, metric: str) -> tuple[str, float] | None:
    """Issue 13's bound on this row's ratio, as (its wording, its value); None where it sets none."""
    goal = GOALS.get((row["width"], metric))
    if goal is None or row["path"] == "pytorch":
        return None
    text, bound = goal
    return text, {"params": row["param_ratio"], "flops": 1.15 * row["flop_ratio"][metric]}.get(bound, bound)


def goal_text(row: dict, metric: str) -> str:
    goal = goal_limit(row, metric)
    if goal is None:
        return "—"
    text, limit = goal
    return f"{text} ({limit:.2f}): {'met' if row['phases'][metric]['ratio'] <= limit else 'not met'}"


def plot(results: dict, path: Path) -> Path:
    """One panel per width: the ratio of every phase and thread count, a bar per path (IQR whiskers),
    the FLOP ratio dotted, the goal dashed."""
    variants = {("kernels", "eager"): "kernels, eager", ("pytorch", "eager"): "PyTorch path, eager",
                ("kernels", "compiled"): "kernels, compiled"}
    widths = list(dict.fromkeys(row["width"] for row in results["added_cost"]))
    figure, axes = subplots(1, len(widths), figsize=(6.5 * len(widths), 4.2), squeeze=False)
    bar = 0.8 / len(variants)
    for ax, width in zip(axes[0], widths):
        rows = [row for row in results["added_cost"] if row["width"] == width]
        groups = [(metric, threads) for metric in PHASES for threads in sorted({row["threads"] for row in rows})]
        for i, (variant, label) in enumerate(variants.items()):
            xs, ratios, below, above = [], [], [], []
            for g, (metric, threads) in enumerate(groups):
                for row in rows:
                    if (row["path"], row["inference"]) == variant and row["threads"] == threads and metric in row["phases"]:
                        p = row["phases"][metric]
                        xs.append(g + (i - (len(variants) - 1) / 2) * bar)
                        ratios.append(p["ratio"])
                        below.append(max(0.0, p["ratio"] - p["round_q1"]))
                        above.append(max(0.0, p["round_q3"] - p["ratio"]))
            if xs:
                ax.bar(xs, ratios, bar, yerr=[below, above], capsize=2, label=label)
        for g, (metric, threads) in enumerate(groups):
            row = next(row for row in rows if row["threads"] == threads)
            ax.hlines(row["flop_ratio"][metric], g - 0.45, g + 0.45, colors="black", linestyles="dotted",
                      label="FLOP ratio" if g == 0 else None)
            goal = goal_limit(row, metric)
            if goal:
                ax.hlines(goal[1], g - 0.45, g + 0.45, colors="red", linestyles="dashed",
                          label="goal" if not any(t.get_label() == "goal" for t in ax.collections) else None)
        ax.set_xticks(range(len(groups)), [f"{PHASES[m].replace(' (per token)', '')}\n{t} thread{'s' * (t > 1)}"
                                           for m, t in groups], fontsize=8)
        ax.set_title(f"{width} (+{rows[0]['new_blocks']} on {rows[0]['base_blocks']})")
        ax.set_ylabel("MIDUS ÷ LLaMA Pro, added cost per block")
        ax.legend(fontsize=7)
    return save_figure(figure, path)


def markdown(results: dict) -> str:
    lines = ["| width | phase | threads | MIDUS ÷ LLaMA Pro, added cost per block [run-by-run IQR] | "
             "MIDUS ms/block [IQR] | LLaMA Pro ms/block [IQR] | FLOP ratio | parameter ratio | goal |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in results["added_cost"]:
        for metric, p in row["phases"].items():
            phase = (PHASES[metric] + (", PyTorch path" if row["path"] == "pytorch" else "")
                     + (", compiled" if row["inference"] == "compiled" else ""))
            lines.append(f"| {row['width']} (+{row['new_blocks']} on {row['base_blocks']}) | {phase} | {row['threads']} | "
                         f"**{p['ratio']:.2f}** [{p['round_q1']:.2f}–{p['round_q3']:.2f}] | "
                         f"{p['midus_ms']:.3f} [{p['midus_iqr_ms'][0]:.3f}–{p['midus_iqr_ms'][1]:.3f}] | "
                         f"{p['llama_pro_ms']:.3f} [{p['llama_pro_iqr_ms'][0]:.3f}–{p['llama_pro_iqr_ms'][1]:.3f}] | "
                         f"{row['flop_ratio'][metric]:.2f} | {row['param_ratio']:.2f} | {goal_text(row, metric)} |")
    pkm = results["product_key_memory"]
    lines += ["", f"Retrieval + pooling, forward + backward on 1 × {pkm['tokens']} queries (1B width):", "",
              "| case | median s | min s | max s |", "|---|---|---|---|"]
    lines += [f"| {n} | {s['median']:.4f} | {s['min']:.4f} | {s['max']:.4f} |" for n, s in pkm["seconds"].items()]
    for key, value in pkm.items():
        if key.startswith("speed-up"):
            lines.append(f"\n**{key} (product-key-memory ÷ ours): {value['ratio']:.2f}×** "
                         f"[run-by-run IQR {value['round_q1']:.2f}–{value['round_q3']:.2f}] (goal ≥ 2×)")
    lines += ["", f"Where a block's time goes, block by block (no model around it, no AdamW; 1 × "
                  f"{results['breakdown'][0]['tokens']} tokens, decode: one token after them; median of "
                  f"{results['rounds']} rounds). The floor is the memory block with retrieval and pooling free: its "
                  f"attention part, the HIVE projection and the residual; no retrieval takes the ratio below it.", "",
              "| width | phase | threads | full block ms | memory block ms | its attention part ms | floor ms | "
              "memory ÷ full | attention part ÷ full | floor ÷ full |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['width']} | {r['phase']} | {r['threads']} | {r['full block_ms']:.3f} | {r['memory block_ms']:.3f} | "
              f"{r['attention part_ms']:.3f} | {r['floor_ms']:.3f} | {r['memory_ratio']:.2f} | {r['attention_ratio']:.2f} | "
              f"{r['floor_ratio']:.2f} |" for r in results["breakdown"]]
    memory = results["training_memory"]
    lines += ["", f"Training memory of one block at 1B width, 1 × {memory['tokens']} tokens (MiB):", "",
              "| block | weights + grads + AdamW | saved for backward | of which attention | saved, gradient checkpointing |",
              "|---|---|---|---|---|"]
    for name in ("full Llama block", "memory block"):
        m = memory[name]
        lines.append(f"| {name} | {m['weights_grads_adamw_mib']:.1f} | {m['saved_activations_mib']:.1f} | "
                     f"{m['of_which_attention_mib']:.1f} | {m['checkpointed_mib']:.1f} |")
    full, block = memory["full Llama block"], memory["memory block"]
    peak = block["weights_grads_adamw_mib"] + block["saved_activations_mib"]
    bound = block["weights_grads_adamw_mib"] + block["of_which_attention_mib"]
    lines += ["", f"Memory block ÷ full block: parameters (and their training state) {memory['parameter_share']:.3f}, "
                  f"saved activations {memory['activation_share']:.3f}. Peak of the memory block (its weights, "
                  f"gradients and AdamW state + what it saves for the backward): {peak:.1f} MiB, against "
                  f"{full['weights_grads_adamw_mib'] + full['saved_activations_mib']:.1f} for a full block; the goal "
                  f"(its parameter share + the activations a full block also keeps, the attention's): ≤ {bound:.1f} MiB: "
                  f"{'met' if peak <= bound else f'not met by {peak - bound:.1f} MiB'}. With gradient checkpointing "
                  f"either block keeps only its input ({block['checkpointed_mib']:.1f} MiB) from its forward to its "
                  f"backward, which runs the forward again and holds the activations above for that block alone."]
    env = results["environment"]
    lines += ["", f"Environment: {env['device']}, torch {env['torch']}, float32, batch 1; "
                  f"{results['settings']}; {results['rounds']} rounds."]
    if "measured" in results:
        lines += ["", "Measured: " + "; ".join(f"{section.replace('_', ' ')} at {stamp['commit']}, {stamp['started']}"
                                               for section, stamp in results["measured"].items()) + "."]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7, help="bench rounds (every model once per round)")
    parser.add_argument("--tokens", type=int, default=256, help="training step, prefill and pkm queries")
    parser.add_argument("--compile", action="store_true", help="also time inference compiled (minutes of compiling)")
    parser.add_argument("--pytorch-path", action="store_true",
                        help="also time the memory layer's PyTorch path (MIDUS_CPU_KERNELS=0), its reference")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--from-json", type=Path, help="measure nothing: write the table and plot of a saved run")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="measure only these; the others are kept from the memory_cost.json in --out (each "
                             "section records the commit and time it was measured at)")
    args = parser.parse_args()
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        results = measure(args)
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(results)
    if not args.from_json or args.from_json.resolve() != (args.out / "memory_cost.json").resolve():
        (args.out / "memory_cost.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "memory_cost.md").write_text(text)
    plot(results, args.out / "memory_cost.png")
    print(text)


def measure(args) -> dict:
    settings = {"train_seq_len": args.tokens, "prefill_len": args.tokens, "decode_tokens": 32, "warmup": 2}
    results = {"settings": settings, "rounds": args.rounds, "compiled": args.compile, "pytorch_path": args.pytorch_path,
               "environment": {"device": f"cpu ({platform.machine()}, {torch.get_num_threads()} threads by default)",
                               "torch": torch.__version__}}
    if set(args.sections) != set(SECTIONS):
        saved = args.out / "memory_cost.json"
        if not saved.exists():
            raise SystemExit(f"error: --sections measures a part of a run; {saved} holds no run to keep the rest of")
        kept = json.loads(saved.read_text())
        if (kept["settings"], kept["rounds"]) != (settings, args.rounds):
            raise SystemExit(f"error: {saved} was measured with {kept['settings']} and {kept['rounds']} rounds, "
                             f"not {settings} and {args.rounds}")
        results = {**kept, "environment": results["environment"]}
        if "added_cost" in args.sections:
            results.update(compiled=args.compile, pytorch_path=args.pytorch_path)
    stamp = {"commit": subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],
                                      capture_output=True, text=True).stdout.strip() or "unknown",
             "started": datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}
    if "added_cost" in args.sections:
        with tempfile.TemporaryDirectory(prefix="memory-cost-") as folder:
            results["added_cost"] = added_costs(Path(folder), args.threads, args.rounds, settings, args.compile,
                                                args.pytorch_path)
    torch.set_num_threads(args.threads[0])
    if "product_key_memory" in args.sections:
        results["product_key_memory"] = against_product_key_memory(args.tokens, 2 * args.rounds + 1)
    if "breakdown" in args.sections:
        results["breakdown"] = block_breakdown(args.tokens, args.rounds, args.threads)
    if "training_memory" in args.sections:
        results["training_memory"] = training_memory(args.tokens)
    results["measured"] = {**results.get("measured", {}), **{section: stamp for section in args.sections}}
    return results


if __name__ == "__main__":
    main()
