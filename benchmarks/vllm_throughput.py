"""vLLM generation throughput (batched, greedy) of a MIDUS model vs a LLaMA Pro model grown from the same
base to the same depth, both served by vLLM side by side in one run.

MIDUS runs through vLLM's Transformers backend (its shipped modeling code, `model_impl="transformers"`),
LLaMA Pro, a plain Llama, through vLLM's native Llama. Both engines are up at once and generate the same
batch of prompts in turn, round after round, so machine noise hits both alike; the figures are medians.
Run it in the vLLM environment (README, 'Serving with vLLM'):

    .venv-vllm/bin/python benchmarks/vllm_throughput.py [--base-layers 3] [--new-blocks 2] [--batch 16] [--new-tokens 32]
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

D, D_FF, HEADS, KV_HEADS = 1024, 4096, 16, 4  # head_dim 64, one vLLM's CPU attention supports
MEMORY = {"n_keys": 64, "topk": 32, "latent_dim": 64}  # the paper-1b recipe's memory
METHOD_NAMES = {"midus": "MIDUS", "llama-pro": "LLaMA Pro"}


def write_models(root: Path, base_layers: int, new_blocks: int) -> dict[str, Path]:
    """The base and both grown folders, saved as `midus upscale` saves them."""
    import midus
    from midus.checkpoint import load_tokenizer, save_model
    from midus.tiny import write_tiny_llama

    base = write_tiny_llama(root / "base", layers=base_layers, hidden_size=D, heads=HEADS, kv_heads=KV_HEADS,
                            intermediate_size=D_FF, max_positions=1024)
    folders = {}
    for method, name in METHOD_NAMES.items():
        recipe = midus.Recipe.parse({"base": str(base), "method": method, "new_blocks": new_blocks,
                                     "placement": "bottom-heavy", "dtype": "float32",
                                     **({"memory": MEMORY} if method == "midus" else {})})
        folders[name] = root / method
        save_model(midus.upscale(str(base), recipe), load_tokenizer(str(base)), folders[name])
    return folders


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-layers", type=int, default=3)
    parser.add_argument("--new-blocks", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="prompts per generate call")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

    import torch
    import vllm
    from midus.report import markdown_table, stack_letters
    from midus.serve import engine_args

    with tempfile.TemporaryDirectory() as tmp:
        folders = write_models(Path(tmp), args.base_layers, args.new_blocks)
        configs = {name: json.loads((folder / "config.json").read_text()) for name, folder in folders.items()}
        engines = {name: vllm.LLM(**engine_args(str(folder)), dtype="float32", max_model_len=512, seed=0,
                                  enforce_eager=True) for name, folder in folders.items()}
        vocab = configs["MIDUS"]["vocab_size"]
        generator = torch.Generator().manual_seed(0)
        prompts = [{"prompt_token_ids": torch.randint(5, vocab, (args.prompt_tokens,), generator=generator).tolist()}
                   for _ in range(args.batch)]
        sampling = vllm.SamplingParams(temperature=0, max_tokens=args.new_tokens, ignore_eos=True)

        def run(llm) -> float:
            start = time.perf_counter()
            outputs = llm.generate(prompts, sampling, use_tqdm=False)
            assert sum(len(o.outputs[0].token_ids) for o in outputs) == args.batch * args.new_tokens
            return time.perf_counter() - start

        for _ in range(args.warmup):
            for llm in engines.values():
                run(llm)
        seconds = {name: [] for name in engines}
        for _ in range(args.repeats):  # rounds interleaved: noise hits both models alike
            for name, llm in engines.items():
                seconds[name].append(run(llm))

    tokens = args.batch * args.new_tokens
    rate = {name: [tokens / s for s in times] for name, times in seconds.items()}
    median = {name: statistics.median(r) for name, r in rate.items()}
    results = {
        "command": ".venv-vllm/bin/python benchmarks/vllm_throughput.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "vllm": vllm.__version__, "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "cpu_cores": os.cpu_count(), "dtype": "float32", "enforce_eager": True,
        "threads": "vLLM's CPU worker binds its OpenMP threads itself (VLLM_CPU_OMP_THREADS_BIND="
                   f"{os.environ.get('VLLM_CPU_OMP_THREADS_BIND', 'auto')}: auto uses the cores of one NUMA node but "
                   "one, reserved for the engine)",
        "shape": {"d": D, "d_ff": D_FF, "heads": HEADS, "kv_heads": KV_HEADS, "vocab": vocab,
                  "base_layers": args.base_layers, "new_blocks": args.new_blocks, "memory": MEMORY},
        "models": {name: {"layers": [entry["kind"] for entry in configs[name].get("layer_map") or []],
                          "vllm_implementation": "transformers backend" if name == "MIDUS" else "native Llama",
                          "generate_seconds": seconds[name], "tokens_per_s": rate[name],
                          "median_tokens_per_s": median[name],
                          "spread_tokens_per_s": [min(rate[name]), max(rate[name])]}
                   for name in engines},
        "ratio": {"generated tokens/s, MIDUS / LLaMA Pro (of the medians)": median["MIDUS"] / median["LLaMA Pro"],
                  "generated tokens/s, MIDUS / LLaMA Pro (median of the rounds' ratios)": statistics.median(
                      midus / pro for midus, pro in zip(rate["MIDUS"], rate["LLaMA Pro"]))},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vllm_throughput.json").write_text(json.dumps(results, indent=2))
    lines = [f"vLLM {vllm.__version__} generation ({results['device']}, {os.cpu_count()} cores, fp32, eager), "
             f"{args.batch} prompts x ({args.prompt_tokens} prompt + {args.new_tokens} generated tokens) per call, "
             f"median of {args.repeats} interleaved calls", "",
             *markdown_table(["model", "layers", "served by", "generated tokens/s (median)", "min - max"], [
                 [name, f"`{stack_letters(row['layers'])}`", row["vllm_implementation"], f"{row['median_tokens_per_s']:.1f}",
                  "{:.1f} - {:.1f}".format(*row["spread_tokens_per_s"])] for name, row in results["models"].items()]),
             "", *markdown_table(["ratio", "value"], [[name, f"{value:.3f}"] for name, value in results["ratio"].items()])]
    (args.out / "vllm_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":  # vLLM starts its engines in new processes
    main()
