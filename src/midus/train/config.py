"""The training config: validated YAML, every field documented; CLI flags override single fields."""

import hashlib
import json
import math
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from ..data.sources import DataConfig
from ..errors import UsageError
from ..schema import Strict, YamlModel
from .lora import LoraSettings

# Fields that do not change what a run computes: a run folder may be resumed with other values.
RUNTIME_FIELDS = ("output_dir", "report_to", "keep_checkpoints", "dataloader_workers", "memory_probe_sequences")
# fields added after run folders existed: left out of a run's identity at their default, so those runs resume
LATER_FIELDS = {"lora": None, "projection_group": "scheduled"}
RUNTIME_DATA_FIELDS = ("cache_dir", "num_proc")


class TrainConfigError(UsageError):
    """A training config that cannot be used; the message is one line naming the problem."""


class TrainConfig(YamlModel):
    """Continued pre-training of a model folder: data, budget, optimiser, precision, checkpoints."""

    kind: ClassVar[str] = "config"
    error: ClassVar[type[UsageError]] = TrainConfigError

    model: str = Field(description="model folder (MIDUS, or a plain/grown Llama) or hub id to train")
    tokenizer: str | None = Field(None, description="tokenizer folder or hub id (default: the model's own)")
    output_dir: str = Field(description="run folder: checkpoints, metrics.jsonl, loss.png, and the final model in model/")
    data: DataConfig

    seq_len: int = Field(1024, ge=2, description="tokens per training sequence (documents are packed, EOS between them)")
    max_tokens: int | None = Field(None, ge=1, description="budget in training tokens (rounded up to whole steps); or max_steps")
    max_steps: int | None = Field(None, ge=1, description="budget in optimizer steps; or max_tokens")
    batch_size: int = Field(64, ge=1, description="sequences per optimizer step, over all processes (the global batch)")
    micro_batch_size: int = Field(8, ge=1, description="sequences per forward/backward on each process; "
                                  "gradient accumulation = batch_size / (micro_batch_size * processes)")

    lr: float = Field(3e-4, gt=0, description="maximum learning rate of the scheduled (non-memory) parameters")
    memory_lr: float | None = Field(None, gt=0, description="learning rate of memory sub-keys and banks, constant, no schedule (default: lr)")
    projection_group: Literal["scheduled", "memory"] = Field(
        "scheduled", description="HIVE's projections P: scheduled like the backbone (with weight decay), or in the "
                                 "memory group (memory_lr, constant, no weight decay)")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="the cosine decays to lr * min_lr_ratio")
    warmup: float = Field(0.01, ge=0, description="linear warmup: a fraction of the steps if < 1, else a number of steps")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay of scheduled matrices (never of norms, biases or memory)")
    adam_betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping norm (0: no clipping)")
    trainable: Literal["all", "new-blocks", "memory", "lora"] = Field(
        "all", description="all parameters; only the blocks growth added (LLaMA Pro); only the memory layers; "
                           "or LoRA adapters on the frozen model (PEFT; settings in `lora`)")
    lora: LoraSettings | None = Field(None, description="trainable: lora: rank, alpha, dropout, target_modules "
                                      "(default: q/k/v/o of every block and HIVE's projection)")

    precision: Literal["fp32", "bf16"] = Field("fp32", description="fp32, or bf16 autocast with fp32 master weights")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass to save memory")
    seed: int = Field(0, description="seed of the data order, the held-out split and every random number")
    deterministic: bool = Field(False, description="deterministic algorithms only (bitwise-reproducible runs; slower on GPU)")

    log_interval: int = Field(10, ge=1, description="steps between metrics records (loss, lr per group, tokens/s)")
    eval_interval: int = Field(500, ge=0, description="steps between held-out evaluations (0: only at the end)")
    save_interval: int = Field(500, ge=0, description="steps between checkpoints (0: none; then a killed run starts over); "
                               "a multiple of log_interval, so that a resumed run logs exactly what an unbroken one does")
    keep_checkpoints: int = Field(2, ge=1, description="how many of the newest checkpoints to keep")
    report_to: list[Literal["tensorboard", "wandb"]] = Field([], description="also report metrics to TensorBoard and/or W&B")
    fsdp: bool = Field(False, description="shard parameters, gradients and optimizer state over the processes (FSDP2) "
                       "for models that do not fit one device; otherwise every process holds a replica (DDP)")
    fsdp_config: dict[str, Any] = Field({}, description="FSDP options, as the Trainer's `fsdp_config` (e.g. {cpu_offload: true})")
    dataloader_workers: int = Field(0, ge=0, description="data-loading worker processes")
    memory_probe_sequences: int = Field(
        8, ge=0, description="at every evaluation, on this many of the held-out sequences, per memory (or pkm) block: "
                             "the memory's share of the residual stream and the loss change when its memory is removed "
                             "(`eval_memory_*` in metrics.jsonl; one extra pass per block); 0: off")

    @model_validator(mode="after")
    def _budget(self):
        if (self.max_tokens is None) == (self.max_steps is None):
            raise ValueError("give exactly one budget: max_tokens or max_steps")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size={self.batch_size} is not a multiple of micro_batch_size={self.micro_batch_size}")
        if self.lora is not None and self.trainable != "lora":
            raise ValueError(f"lora: settings given with trainable: {self.trainable}; LoRA is trainable: lora (adapters "
                             "on the frozen model); to add LoRA to a model whose new blocks you trained, train "
                             "trainable: new-blocks first, then trainable: lora on its output")
        if self.trainable == "lora" and self.fsdp:
            raise ValueError("trainable: lora with fsdp: true is not supported; LoRA trains few parameters, use DDP")
        if self.save_interval and self.save_interval % self.log_interval:
            raise ValueError(f"save_interval={self.save_interval} must be a multiple of log_interval={self.log_interval}")
        return self

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def total_steps(self) -> int:
        return self.max_steps if self.max_steps is not None else math.ceil(self.max_tokens / self.tokens_per_step)

    @property
    def warmup_steps(self) -> int:
        return round(self.warmup * self.total_steps) if self.warmup < 1 else int(self.warmup)

    def gradient_accumulation(self, processes: int) -> int:
        per_step = self.micro_batch_size * processes
        if self.batch_size % per_step:
            raise TrainConfigError(
                f"batch_size={self.batch_size} is not a multiple of micro_batch_size={self.micro_batch_size} "
                f"x {processes} processes; change one of them")
        return self.batch_size // per_step

    @property
    def lora_settings(self) -> LoraSettings:
        return self.lora or LoraSettings()

    def identity(self) -> dict:
        """What defines the run: everything but the runtime fields (and no key of a later field at its
        default, so that run folders written before it existed keep their fingerprint)."""
        exclude = {**dict.fromkeys(RUNTIME_FIELDS, True), "data": set(RUNTIME_DATA_FIELDS)}
        exclude.update({name: True for name, default in LATER_FIELDS.items() if getattr(self, name) == default})
        return self.model_dump(mode="json", exclude=exclude)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]
