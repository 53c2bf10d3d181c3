"""Training tokens/s of a MIDUS model vs a LLaMA Pro model grown from the same base to the same depth,
measured side by side in one run, next to the ratio of their FLOPs per token from `midus inspect`.

The base has Llama-3.2-1B width (d 2048, 32 heads, 8 KV heads, d_ff 8192) and few blocks (default 3);
each method inserts the same new blocks (default 2, after blocks 0 and 1: 3 -> 5). A training step is the one
`midus train` takes: forward with labels, backward, gradient clipping, the paper's AdamW groups
(fused) and their schedules, every parameter trained (so backward costs 2x forward for both models
and the forward FLOP ratio is the training FLOP ratio). Steps of the two models alternate, round
after round, so machine noise hits both alike; the figures are medians.

    python benchmarks/train_throughput.py [--base-layers 3] [--new-blocks 2] [--seq-len 512] [--batch 1] [--repeats 5]
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import midus
from midus.layer_report import describe
from midus.report import markdown_table, stack_letters
from midus.tiny import write_tiny_llama
from midus.train import TrainConfig
from midus.train.optim import build_optimizer, build_scheduler
from midus.growth.registry import METHODS

D, D_FF, HEADS, KV_HEADS = 2048, 8192, 32, 8
MEMORY = {"n_keys": 64, "topk": 32, "latent_dim": 64}  # the paper-1b recipe's memory
METHOD_NAMES = {"midus": "MIDUS", "llama-pro": "LLaMA Pro"}


def grow(base: Path, method: str, new_blocks: int):
    recipe = midus.Recipe.parse({"base": str(base), "method": method, "new_blocks": new_blocks,
                                 "placement": "bottom-heavy", "dtype": "float32",
                                 **({"memory": MEMORY} if method == "midus" else {})})
    return midus.upscale(str(base), recipe)


def training_step(model, config: TrainConfig, ids: torch.Tensor):
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def timed(step) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one step (CPU time: this process's threads only, a cross-check
    that other processes sharing the machine do not inflate)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-layers", type=int, default=3)
    parser.add_argument("--new-blocks", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        base = write_tiny_llama(Path(tmp) / "base", layers=args.base_layers, hidden_size=D, heads=HEADS, kv_heads=KV_HEADS,
                                intermediate_size=D_FF, max_positions=max(4096, args.seq_len))
        models = {name: grow(base, method, args.new_blocks).to(device) for method, name in METHOD_NAMES.items()}
    config = TrainConfig.parse({"model": "-", "output_dir": "-", "data": {"files": ["-"]}, "max_steps": 1000,
                                "seq_len": args.seq_len, "lr": 1e-4, "warmup": 10})
    vocab = models["MIDUS"].config.vocab_size
    ids = torch.randint(5, vocab, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    steps = {name: training_step(model.train(), config, ids) for name, model in models.items()}

    for _ in range(args.warmup):
        for step in steps.values():
            step()
    seconds, cpu_seconds = {name: [] for name in steps}, {name: [] for name in steps}
    for _ in range(args.repeats):  # rounds interleaved: noise hits both models alike
        for name, step in steps.items():
            wall, cpu = timed(step)
            seconds[name].append(wall)
            cpu_seconds[name].append(cpu)

    tokens = args.batch * args.seq_len
    context = (args.seq_len + 1) // 2  # keys a query attends to, averaged over a causal sequence
    flops = {name: describe(model, name=name, context=context)["flops_per_token"]["total"] for name, model in models.items()}
    median = {name: statistics.median(t) for name, t in seconds.items()}
    rate = {name: tokens / median[name] for name in models}
    cpu_median = {name: statistics.median(t) for name, t in cpu_seconds.items()}
    measured = rate["MIDUS"] / rate["LLaMA Pro"]
    measured_cpu = cpu_median["LLaMA Pro"] / cpu_median["MIDUS"]
    expected = flops["LLaMA Pro"] / flops["MIDUS"]
    results = {
        "command": "python benchmarks/train_throughput.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "device": device, "threads": torch.get_num_threads(),
        "shape": {"d": D, "d_ff": D_FF, "heads": HEADS, "kv_heads": KV_HEADS, "vocab": vocab,
                  "base_layers": args.base_layers, "new_blocks": args.new_blocks, "memory": MEMORY,
                  "seq_len": args.seq_len, "batch": args.batch},
        "models": {name: {"layers": [entry["kind"] for entry in model.config.layer_map],
                          "parameters": sum(p.numel() for p in model.parameters()),
                          "flops_per_token": flops[name], "step_seconds": seconds[name],
                          "step_cpu_seconds": cpu_seconds[name], "median_step_seconds": median[name],
                          "tokens_per_s": rate[name], "tokens_per_cpu_s": tokens / cpu_median[name]}
                   for name, model in models.items()},
        "ratio": {"measured tokens/s, MIDUS / LLaMA Pro": measured, "FLOPs per token, LLaMA Pro / MIDUS": expected,
                  "measured / FLOP ratio": measured / expected,
                  "tokens per CPU-second, MIDUS / LLaMA Pro": measured_cpu,
                  "CPU-time ratio / FLOP ratio": measured_cpu / expected},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_throughput.json").write_text(json.dumps(results, indent=2))
    lines = [f"Training step ({device}, {torch.get_num_threads()} threads), {args.batch}x{args.seq_len} tokens, "
             f"median of {args.repeats} interleaved steps", "",
             *markdown_table(["model", "layers", "parameters", "FLOPs/token (fwd)", "s/step", "tokens/s"], [
                 [name, f"`{stack_letters(row['layers'])}`", f"{row['parameters'] / 1e6:.1f}M",
                  f"{row['flops_per_token'] / 1e6:.1f}M", f"{row['median_step_seconds']:.3f}", f"{row['tokens_per_s']:.1f}"]
                 for name, row in results["models"].items()]),
             "", *markdown_table(["ratio", "value"], [[name, f"{value:.3f}"] for name, value in results["ratio"].items()])]
    (args.out / "train_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    assert set(METHOD_NAMES) <= set(METHODS), f"growth methods missing: {set(METHOD_NAMES) - set(METHODS)}"
    main()
