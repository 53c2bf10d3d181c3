"""Helpers shared by the training tests."""

import sys
from pathlib import Path

from midus.train import TrainConfig


def tiny_config(model, output_dir, data: dict, **fields) -> TrainConfig:
    """A small, fast run: 32-token sequences, 8 per step in micro-batches of 4 (accumulation 2)."""
    settings = dict(model=str(model), output_dir=str(output_dir), data={"eval_sequences": 4, **data},
                    seq_len=32, max_steps=16, batch_size=8, micro_batch_size=4, lr=3e-3, warmup=2,
                    log_interval=1, eval_interval=8, save_interval=4, keep_checkpoints=2)
    return TrainConfig.parse({**settings, **fields})


def write_config(config: TrainConfig, path: Path) -> Path:
    path.write_text(config.to_yaml())
    return path


def midus_command() -> list[str]:
    return [sys.executable, "-m", "midus"]
