"""Speed of a MIDUS memory block at Llama-3.2-1B width, measured side by side in one run.

1. memory block vs a full duplicated Llama block: forward + backward on 1 x 512 tokens;
2. our product-key retrieval + value pooling vs the PyPI `product-key-memory` layer doing the same
   work: 32 heads, n = 64 sub-keys per half, top-k 32, LayerNorm on each query half (its default),
   and the same value table, HIVE's latent bank [n*n, r = 64] (and, second, a wide [n*n, d] table).
   Its query projection `to_queries` is replaced by the identity (d = 2 x heads x 32 = 2048), so
   both sides start from the same [512, 2048] queries and the timing holds retrieval and pooling
   only; both pick the same slots with the same weights (checked before timing).

    python benchmarks/memory_block_speed.py [--tokens 512] [--repeats 15] [--threads N] [--out benchmarks/results]
"""

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from midus.model import MidusConfig, MidusMemoryBlock
from midus.model.hml import ProductKeys, normalize_query
from midus.model.values import pool

D, D_FF, HEADS, KV_HEADS, N_KEYS, TOPK, LATENT = 2048, 8192, 32, 8, 64, 32, 64


def timed(fn, inputs) -> float:
    start = time.perf_counter()
    fn(*inputs)
    return time.perf_counter() - start


def side_by_side(cases: dict, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Run every case once per round, rounds interleaved, so machine noise hits all alike."""
    for fn, inputs in cases.values():
        for _ in range(warmup):
            fn(*inputs)
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (fn, inputs) in cases.items():
            times[name].append(timed(fn, inputs))
    return times


def forward_backward(module_fn, module: nn.Module):
    def run(x, *rest):
        x.grad = None
        module.zero_grad(set_to_none=True)
        module_fn(x, *rest).float().sum().backward()

    return run


def check_same_work(ours, keys, their_layers, queries):
    """Both sides pick the same slots with the same weights: per-head pools summed equal theirs.
    Checked in float64, where near-ties at the k-th slot cannot flip between the two orders of sums."""
    keys64 = copy.deepcopy(keys).double()
    with torch.no_grad():
        for layer in their_layers:
            layer64 = copy.deepcopy(layer).double()
            mine = ours(layer64.values.weight, keys64)(queries.double())
            mine = mine.sum(1) if mine.dim() == 3 else mine
            torch.testing.assert_close(mine, layer64(queries.double())[0])


def block_flops_per_token(tokens: int) -> tuple[float, float]:
    """Forward multiply-adds x 2 per token: full block vs memory block (causal attention averaged)."""
    d_h = D // HEADS
    qkv = D * HEADS * d_h + 2 * D * KV_HEADS * d_h
    attention = 2 * HEADS * d_h * (tokens + 1) / 2  # scores + weighted values, average causal length
    full = 2 * (qkv + HEADS * d_h * D + 3 * D * D_FF + attention)
    pairs = sum(TOPK // (a + 1) for a in range(TOPK))
    retrieval = HEADS * 2 * N_KEYS * (d_h // 2)  # sub-key scores
    memory = 2 * (qkv + attention + retrieval + HEADS * TOPK * LATENT + HEADS * LATENT * D) + HEADS * pairs
    return full, memory


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    llama = LlamaConfig(hidden_size=D, intermediate_size=D_FF, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                        num_hidden_layers=1, vocab_size=128, attn_implementation="sdpa")
    midus = MidusConfig(**{k: v for k, v in llama.to_dict().items() if k not in ("model_type", "transformers_version")},
                        memory={"n_keys": N_KEYS, "topk": TOPK, "latent_dim": LATENT})
    midus._attn_implementation = llama._attn_implementation = "sdpa"
    full_block, memory_block = LlamaDecoderLayer(llama, 0), MidusMemoryBlock(midus, 0)
    nn.init.normal_(memory_block.memory.values.proj.weight, std=0.02)
    nn.init.normal_(memory_block.memory.values.bank, std=LATENT**-0.5)
    nn.init.uniform_(memory_block.memory.retrieval.keys, -0.2, 0.2)

    x = torch.randn(1, args.tokens, D, requires_grad=True)
    position_embeddings = LlamaRotaryEmbedding(llama)(x, torch.arange(args.tokens)[None])

    def call(block):
        return lambda h: block(h, attention_mask=None, position_embeddings=position_embeddings)

    # --- 2: retrieval + pooling, ours vs product-key-memory, on the same value table ---------------
    from product_key_memory import PKM

    def their_layer(value_dim):
        layer = PKM(dim=D, heads=HEADS, num_keys=N_KEYS, topk=TOPK, dim_head=D // HEADS // 2)
        layer.to_queries = nn.Identity()  # queries come in ready-made, as an HML's do
        layer.values = nn.EmbeddingBag(N_KEYS**2, value_dim, mode="sum")  # the value table under test
        nn.init.normal_(layer.values.weight, std=value_dim**-0.5)
        return layer

    theirs_latent, theirs_wide = their_layer(LATENT), their_layer(D)
    keys = ProductKeys(HEADS, D // HEADS, N_KEYS, TOPK)
    with torch.no_grad():  # the same sub-keys: theirs are [h, n, 2, d/2], ours [h, 2, n, d/2]
        keys.keys.copy_(theirs_latent.keys.permute(0, 2, 1, 3))
        theirs_wide.keys.copy_(theirs_latent.keys)

    def ours(table, keys=keys):
        """HIVE's pooling with a latent table (one bag per head: z_h), the `shared` variant's with a
        wide one (heads summed: one bag of H*k rows per token, as theirs)."""
        per_head = table.shape[1] < D

        def run(queries):
            # their feature order is (half, head, dim), ours (head, half, dim); LayerNorm per half as theirs
            halves = queries.view(-1, 2, HEADS, D // HEADS // 2).transpose(1, 2)
            slots, weights = keys(normalize_query(halves, "layer").flatten(2))
            if per_head:
                return pool(table, slots.flatten(0, 1), weights.flatten(0, 1)).view(-1, HEADS, table.shape[1])
            return pool(table, slots.flatten(1), weights.flatten(1))

        return run

    queries = torch.randn(1, args.tokens, D, requires_grad=True)
    check_same_work(ours, keys, (theirs_latent, theirs_wide), queries)

    cases = {
        "full Llama block": (forward_backward(call(full_block), full_block), (x,)),
        "memory block": (forward_backward(call(memory_block), memory_block), (x,)),
        "product-key-memory, table n^2 x r": (forward_backward(theirs_latent, theirs_latent), (queries,)),
        "ours, table n^2 x r": (forward_backward(ours(theirs_latent.values.weight), keys), (queries,)),
        "product-key-memory, table n^2 x d": (forward_backward(theirs_wide, theirs_wide), (queries,)),
        "ours, table n^2 x d": (forward_backward(ours(theirs_wide.values.weight), keys), (queries,)),
    }
    times = side_by_side(cases, args.repeats)
    median = {name: statistics.median(t) for name, t in times.items()}
    full_flops, memory_flops = block_flops_per_token(args.tokens)
    results = {
        "shape": {"d": D, "d_ff": D_FF, "heads": HEADS, "kv_heads": KV_HEADS, "n_keys": N_KEYS, "topk": TOPK,
                  "latent_dim": LATENT, "tokens": args.tokens, "threads": torch.get_num_threads()},
        "seconds": {name: {"median": median[name], "min": min(t), "max": max(t)} for name, t in times.items()},
        "ratios": {
            "memory block / full block (time)": median["memory block"] / median["full Llama block"],
            "memory block / full block (FLOPs)": memory_flops / full_flops,
            "product-key-memory / ours, table n^2 x r": median["product-key-memory, table n^2 x r"]
            / median["ours, table n^2 x r"],
            "product-key-memory / ours, table n^2 x d": median["product-key-memory, table n^2 x d"]
            / median["ours, table n^2 x d"],
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory_block_speed.json").write_text(json.dumps(results, indent=2))
    lines = ["| case | median s | min s | max s |", "|---|---|---|---|"]
    lines += [f"| {n} | {s['median']:.4f} | {s['min']:.4f} | {s['max']:.4f} |" for n, s in results["seconds"].items()]
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {n} | {v:.3f} |" for n, v in results["ratios"].items()]
    (args.out / "memory_block_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
