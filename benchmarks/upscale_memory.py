"""Peak memory of `midus upscale` on a Llama-3.2-1B-shaped base, next to the grown checkpoint's size.

Growth streams: the base's tensors are read one at a time from its safetensors into the grown model,
so the process holds the grown model, one base tensor and one shard being written; the target is a
peak RSS under 2.5x the size of the grown checkpoint on disk.

1. writes (once) a random base with the real Llama-3.2-1B shapes (d 2048, d_ff 8192, 16 blocks,
   32 heads, 8 KV heads, vocab 128256, tied embeddings) in bf16: ~2.5 GB;
2. runs `midus upscale` as a subprocess for each method's paper-1b recipe (16 -> 24 blocks) on it,
   and reads the child's peak RSS from the kernel (wait4);
3. writes a Markdown + JSON table.

    python benchmarks/upscale_memory.py [--methods llama-pro midus ...] [--work runs/upscale-memory]
                                        [--out benchmarks/results]

LESA is left out by default: its per-kind SVD and predictor training take tens of minutes on a CPU
(add it with --methods lesa).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from midus.data.tokenizer import train_bpe_tokenizer

RECIPES = Path(__file__).parents[1] / "recipes" / "paper-1b"
LIMIT = 2.5  # peak RSS / grown checkpoint size
LLAMA_32_1B = dict(
    hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
    head_dim=64, vocab_size=128256, tie_word_embeddings=True, max_position_embeddings=131072, rms_norm_eps=1e-5,
    rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
)


def write_base(folder: Path) -> Path:
    """A random bf16 base at Llama-3.2-1B shapes (skipped if already written)."""
    if (folder / "config.json").is_file():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**LLAMA_32_1B))
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    model.tie_weights()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
    model.save_pretrained(tmp)
    train_bpe_tokenizer(["a base for the upscale memory benchmark"] * 8, 300).save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure(method: str, base: Path, work: Path) -> dict:
    recipe = yaml.safe_load((RECIPES / f"{method}.yaml").read_text())
    recipe["base"] = str(base.resolve())
    recipe_path = work / f"{method}.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    out = work / f"grown-{method}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", "from midus.cli import app; app()", "upscale", str(recipe_path), str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"midus upscale failed for {method}: {child.stderr.read()[-2000:]}")
    peak, size = usage.ru_maxrss * 1024, folder_size(out)  # ru_maxrss is in KiB on Linux
    shutil.rmtree(out)
    return {"method": method, "layers": 16 + recipe.get("new_blocks", 0) if method != "none" else 16,
            "checkpoint_bytes": size, "peak_rss_bytes": peak, "ratio": peak / size, "limit": LIMIT,
            "ok": peak / size < LIMIT, "seconds": round(seconds, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["none", "solar", "llama-pro", "pkm", "midus"])
    parser.add_argument("--work", type=Path, default=Path("runs/upscale-memory"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    base = write_base(args.work / "base-1b")
    rows = [measure(method, base, args.work) for method in args.methods]
    gb = 1e9
    lines = [f"# `midus upscale` peak memory, Llama-3.2-1B-shaped base (bf16, {folder_size(base) / gb:.2f} GB on disk)",
             "", "| method | layers | checkpoint (GB) | peak RSS (GB) | peak / checkpoint | < 2.5x | time (s) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['layers']} | {r['checkpoint_bytes'] / gb:.2f} | {r['peak_rss_bytes'] / gb:.2f} "
              f"| {r['ratio']:.2f} | {'yes' if r['ok'] else 'NO'} | {r['seconds']} |" for r in rows]
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "upscale_memory.md").write_text(table)
    (args.out / "upscale_memory.json").write_text(json.dumps({"base_bytes": folder_size(base), "runs": rows}, indent=2))
    print(table)
    if not all(r["ok"] for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
