"""The embedded base: a BPE tokenizer and a tiny Llama trained from scratch on the corpus's
pre-training part with `midus train`, cached so that a second demo skips it.

    <cache>/demo-base-<key>/init/        the randomly initialised Llama with the tokenizer
    <cache>/demo-base-<key>/run/         the `midus train` run folder (an interrupted build resumes)
    <cache>/demo-base-<key>/run/model/   the base: a plain LlamaForCausalLM folder with its tokenizer

The key hashes the corpus's key and every setting below, so another setting builds another base.
"""

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from ..checkpoint import atomic_dir
from ..data.corpus import Corpus, cache_root
from ..data.tokenizer import train_bpe_tokenizer
from ..tiny import write_tiny_llama

BASE_VERSION = 1  # bump when the way the base is built changes


@dataclass(frozen=True)
class BaseSettings:
    vocab_size: int = 2048
    layers: int = 4  # the tiny recipes grow 4 blocks to 6
    hidden_size: int = 128
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 512  # 4d, as Llama-3.2-1B (so a copied block costs what it does there)
    max_positions: int = 512
    seq_len: int = 256
    batch_size: int = 4  # small batches, many steps: a tiny model learns far more per token
    tokens: int = 819_200  # 800 steps, ~6 epochs of the pre-training part: its loss on unseen modules has levelled off
    lr: float = 2e-3
    warmup: float = 0.05
    seed: int = 0

    def key(self, corpus_key: str) -> str:
        identity = {"version": BASE_VERSION, "corpus": corpus_key, **asdict(self)}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def base_folder(corpus: Corpus, settings: BaseSettings, cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or cache_root()) / f"demo-base-{settings.key(corpus.settings.key())}"


def build_base(corpus: Corpus, settings: BaseSettings, cache_dir: str | Path | None = None) -> Path:
    """The base model folder: from the cache, or built now (an interrupted build resumes from its checkpoint)."""
    from ..train import TrainConfig, train

    folder = base_folder(corpus, settings, cache_dir)
    model = folder / "run" / "model"
    if model.is_dir():
        return model
    init = folder / "init"
    if not init.is_dir():
        tokenizer = train_bpe_tokenizer(corpus.texts("pretrain"), settings.vocab_size, add_bos=True)
        with atomic_dir(init) as tmp:
            write_tiny_llama(tmp, layers=settings.layers, hidden_size=settings.hidden_size, heads=settings.heads,
                             kv_heads=settings.kv_heads, intermediate_size=settings.intermediate_size,
                             max_positions=settings.max_positions, seed=settings.seed, tokenizer=tokenizer)
    steps = math.ceil(settings.tokens / (settings.seq_len * settings.batch_size))
    log_interval = max(1, steps // 50)
    config = TrainConfig.parse({
        "model": str(init), "output_dir": str(folder / "run"),
        "data": {"files": [str(corpus.file("pretrain"))], "eval_sequences": 0},
        "seq_len": settings.seq_len, "max_tokens": settings.tokens, "batch_size": settings.batch_size,
        "micro_batch_size": settings.batch_size, "lr": settings.lr, "warmup": settings.warmup,
        "seed": settings.seed, "log_interval": log_interval, "save_interval": 10 * log_interval, "keep_checkpoints": 1,
    }, source="demo base")
    return train(config)
