"""The embedded base: a BPE tokenizer and a tiny Llama trained from scratch on the embedded corpus's
pre-training part with `midus train`, cached so that a second comparison skips it.

    <cache>/demo-base-<key>/init/        the randomly initialised Llama with the tokenizer
    <cache>/demo-base-<key>/run/         the `midus train` run folder (an interrupted build resumes)
    <cache>/demo-base-<key>/run/model/   the base: a plain LlamaForCausalLM folder with its tokenizer

The key hashes the corpus's key and every model setting (`EmbeddedModelSpec`), so another setting
builds another base.
"""

import hashlib
import json
import math
from pathlib import Path

from transformers import LlamaConfig

from ..checkpoint import atomic_dir
from ..data.corpus import Corpus, CorpusSettings, cache_root
from ..data.tokenizer import train_bpe_tokenizer
from ..tiny import write_tiny_llama
from .experiment import CorpusSpec, EmbeddedModelSpec

BASE_VERSION = 1  # bump when the way the base is built changes


def base_key(settings: EmbeddedModelSpec, corpus_key: str) -> str:
    identity = {"version": BASE_VERSION, "corpus": corpus_key, **settings.model_dump()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def corpus_settings(spec: CorpusSpec) -> CorpusSettings:
    return CorpusSettings(**spec.model_dump())


def embedded_config(settings: EmbeddedModelSpec) -> LlamaConfig:
    """The base's architecture (before its tokenizer exists: the vocabulary at its target size)."""
    return LlamaConfig(vocab_size=settings.vocab_size, hidden_size=settings.hidden_size,
                       intermediate_size=settings.intermediate_size, num_hidden_layers=settings.layers,
                       num_attention_heads=settings.heads, num_key_value_heads=settings.kv_heads,
                       max_position_embeddings=settings.max_positions, tie_word_embeddings=False)


def base_folder(corpus: Corpus, settings: EmbeddedModelSpec, cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or cache_root()) / f"demo-base-{base_key(settings, corpus.settings.key())}"


def build_base(corpus: Corpus, settings: EmbeddedModelSpec, cache_dir: str | Path | None = None) -> Path:
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
    }, source="embedded base")
    return train(config)
