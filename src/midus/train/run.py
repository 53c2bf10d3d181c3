"""`midus train`: continued pre-training of a model folder by a TrainConfig, resumable, on 1 CPU, 1 GPU,
DDP (`torchrun --nproc_per_node N`) or FSDP, through the Hugging Face Trainer."""

import importlib.util
import os
import shutil
from contextlib import ExitStack
from pathlib import Path

import torch
from accelerate.utils import load_fsdp_model
from transformers import AutoModelForCausalLM, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import ProgressCallback, TrainerState

from ..checkpoint import (DTYPES, SUPPORTED_MODEL_TYPES, atomic_dir, check_weight_format, load_config, load_tokenizer,
                          load_weights, resolve, save_model, write_error)
from ..data.loading import build_datasets, collate
from ..errors import MidusError, UsageError, warn
from ..recipe import RECIPE_FILE
from .config import TrainConfig
from .lora import adapted
from .metrics import plot_loss
from .optim import select_trainable
from .preemption import Preempted, PreemptionFlag, catch_preemption
from .rundir import RunFolder, checkpoint_step
from .trainer import MidusTrainer, RunCallback

TRAINABLE_FAMILIES = (*SUPPORTED_MODEL_TYPES, "midus")
# transformers 5.24 renamed TrainingArguments.gradient_checkpointing (kept as a deprecated alias until v6)
CHECKPOINTING_ARGUMENT = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                          else "gradient_checkpointing")


def train(config: TrainConfig, overwrite: bool = False) -> Path:
    """Train `config.model` by `config`; returns the final model folder (`output_dir/model`).

    An output folder holding this run resumes from its last intact checkpoint (or returns at once if
    the run is finished); one holding another run is refused unless `overwrite`, and one that a live
    run holds is refused. On SIGTERM / SIGUSR1 every process finishes its step, a checkpoint is written
    at that step, and `Preempted` is raised: the same call resumes."""
    run = RunFolder(config.output_dir)
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    args = training_arguments(config, run, processes)  # sets up the process group under torchrun
    model_config = load_config(config.model)
    check_model(config, model_config)
    try:
        tokenizer = load_tokenizer(config.tokenizer or config.model)
    except MidusError as error:
        raise MidusError(f"{error}; set `tokenizer:` in the config") from None
    with ExitStack() as held, catch_preemption() as preemption:
        with args.main_process_first(desc="run folder"):
            if args.should_save:
                held.enter_context(run.hold(config, overwrite))  # the lock, for the whole run
            else:
                run.prepare(config, overwrite, writer=False)
        if run.model.is_dir():
            return run.model  # finished before
        try:
            return train_in(run, config, args, tokenizer, model_config, preemption)
        except OSError as error:  # a failed write outside a save (the metrics, on a full disk)
            raise write_error(error, run.root, f"the last complete checkpoint ({run.last_checkpoint() or 'none'}) "
                                               "is intact; run the same command again to resume") from None


def train_in(run: RunFolder, config: TrainConfig, args: TrainingArguments, tokenizer, model_config,
             preemption: PreemptionFlag) -> Path:
    with args.main_process_first(desc="tokenize"):
        train_data, eval_data = build_datasets(config.data, tokenizer, config.seq_len, config.seed)
    resume = decided_by_main(args, run.resume_checkpoint)
    resume_step = checkpoint_step(resume) if resume else 0
    finished = resume_step >= config.total_steps  # killed after the last checkpoint: only the model is left to write
    lora = config.trainable == "lora"  # its checkpoints hold the adapter only
    model = load_model(str(resume) if finished and not lora and not config.fsdp else config.model)
    if config.gradient_checkpointing:
        model.config.use_cache = False
    if lora:
        model = adapted(model, config, resume if finished else None)
    else:
        select_trainable(model, config.trainable)
    if args.should_save:
        run.truncate_metrics(resume_step)
    if preemption.received:
        raise Preempted(f"{preemption.name} received before training (re)started at step {resume_step}; "
                        "nothing new to save; run the same command again to resume")
    deterministic = torch.are_deterministic_algorithms_enabled()
    progress = RunCallback(run, config.tokens_per_step)
    try:
        trainer = MidusTrainer(
            model=model, args=args, train_dataset=train_data, eval_dataset=eval_data, data_collator=collate,
            processing_class=tokenizer, train_config=config, run=run, resume=resume, preemption=preemption,
            callbacks=[progress],
        )
        trainer.remove_callback(ProgressCallback)
        if finished:
            trainer.state = TrainerState.load_from_json(str(resume / TRAINER_STATE_NAME))
            if config.fsdp:
                restore_sharded_model(trainer, resume)
        else:
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        if trainer.preemption.stopped_by:
            step = trainer.state.global_step
            raise Preempted(f"{trainer.preemption.stopped_by} received: stopped after step {step} with a complete "
                            f"checkpoint, {run.root / f'checkpoint-{step}'}; run the same command again to resume")
        if eval_data is not None and not evaluated_at(trainer.state, run):
            trainer.evaluate()
        write_final_model(trainer, tokenizer, config.model, run.model, saved_dtype(model_config))
    finally:
        progress.close()
        torch.use_deterministic_algorithms(deterministic)
        if args.should_save:
            try:
                plot_loss(run.records(), run.plot)
            except OSError as error:  # never hides the error that ended the run
                warn(f"cannot write {run.plot}: {error.strerror or error}")
    return run.model


def restore_sharded_model(trainer: MidusTrainer, checkpoint: Path) -> None:
    """The weights of an FSDP checkpoint (sharded, not a model folder), restored as the Trainer
    restores them on resume: the model sharded first (with its optimizer, as accelerate wants),
    then each process reads its shards through torch.distributed.checkpoint."""
    trainer.model_wrapped, _ = trainer.accelerator.prepare(trainer.model, trainer.create_optimizer())
    load_fsdp_model(trainer.accelerator.state.fsdp_plugin, trainer.accelerator, trainer.model, str(checkpoint))


def end_process_group() -> None:
    """Destroy the process group a run under torchrun set up, before the interpreter exits. Left to the
    interpreter's teardown, gloo's worker threads can abort a finished process ("terminate called without an
    active exception", pytorch#190489): a rank that ended well would exit with SIGABRT. For the end of a
    process only: runs in one process share the group (tests/train/test_fsdp.py)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def decided_by_main(args: TrainingArguments, decide):
    """`decide()` on the main process; its result, or its error, on every process."""
    if args.world_size == 1:
        return decide()
    outcome = [None]
    if args.process_index == 0:
        try:
            outcome = [(decide(), None)]
        except MidusError as error:
            outcome = [(None, error)]
    torch.distributed.broadcast_object_list(outcome, src=0)
    result, error = outcome[0]
    if error is not None:
        raise error
    return result


def training_arguments(config: TrainConfig, run: RunFolder, processes: int) -> TrainingArguments:
    for name in config.report_to:
        if importlib.util.find_spec(name) is None:
            raise UsageError(f"report_to: {name} is not installed (pip install {name})")
    if config.fsdp and processes < 2:
        raise UsageError("fsdp: true shards over several processes and this is one; start it under torchrun "
                         "--nproc_per_node N (N >= 2), or drop fsdp")
    if "tensorboard" in config.report_to:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run.root / "tensorboard")  # not in the staging folder
    evaluate = config.data.eval_sequences > 0
    return TrainingArguments(
        output_dir=str(run.staging),  # checkpoints are written here, then renamed into the run folder
        max_steps=config.total_steps,
        per_device_train_batch_size=config.micro_batch_size,
        per_device_eval_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation(processes),
        learning_rate=config.lr, weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
        bf16=config.precision == "bf16",
        **{CHECKPOINTING_ARGUMENT: config.gradient_checkpointing},
        seed=config.seed, full_determinism=config.deterministic,
        logging_steps=config.log_interval, logging_nan_inf_filter=False,
        eval_strategy="steps" if evaluate and config.eval_interval else "no",
        eval_steps=config.eval_interval or None,
        save_strategy="steps" if config.save_interval else "no",
        save_steps=config.save_interval or 1, save_total_limit=None,
        report_to=list(config.report_to) or "none",
        disable_tqdm=False,  # our own bar replaces the Trainer's (ProgressCallback is removed)
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
        dataloader_num_workers=config.dataloader_workers,
        dataloader_pin_memory=torch.accelerator.is_available(),
        use_cpu=not torch.accelerator.is_available(),  # CPU-only: DDP over gloo under torchrun
        fsdp=config.fsdp,
        fsdp_config=fsdp_options(config),
    )


def fsdp_options(config: TrainConfig) -> dict | None:
    """FSDP2 settings: checkpoints in torch.distributed.checkpoint's sharded format (every process
    writes its own shard, nothing is gathered). Activation checkpointing stays the model's own, inside
    each FSDP unit (its parameters are gathered for the backward anyway): FSDP's would wrap every
    block in a CheckpointWrapper, hiding the memory blocks the shared bank is passed to."""
    if not config.fsdp:
        return None
    return {"version": 2, "state_dict_type": "SHARDED_STATE_DICT", **config.fsdp_config}


def check_model(config: TrainConfig, model_config) -> None:
    check_weight_format(resolve(config.model), f"model {config.model}")
    if model_config.model_type not in TRAINABLE_FAMILIES:
        raise MidusError(f"model {config.model}: model_type {model_config.model_type!r} cannot be trained here; "
                         f"supported: {', '.join(TRAINABLE_FAMILIES)}")
    positions = model_config.max_position_embeddings
    if config.seq_len > positions:
        raise UsageError(f"seq_len={config.seq_len} exceeds the {positions} positions of model {config.model}; "
                         f"use seq_len <= {positions}")


def load_model(name: str):
    """The model in fp32 master weights (a MIDUS folder loads through the registered MIDUS classes).
    Not `midus.load.load_model`: training takes a folder or hub id with its weights only (no recipe,
    no random weights) and leaves device and train/eval mode to the Trainer."""
    return load_weights(resolve(name), f"model {name}", dtype=torch.float32)


def saved_dtype(model_config) -> torch.dtype:
    """The dtype the input model was stored in: the final model is written in it too."""
    dtype = getattr(model_config, "dtype", None) or torch.float32
    return DTYPES.get(dtype, torch.float32) if isinstance(dtype, str) else dtype


def evaluated_at(state, run: RunFolder) -> bool:
    """Whether the held-out loss of the last step is logged (by this session, or by a killed one)."""
    records = state.log_history + run.records()
    return any(record.get("step") == state.global_step and "eval_loss" in record for record in records)


def write_final_model(trainer: MidusTrainer, tokenizer, source: str, out: Path, dtype: torch.dtype) -> None:
    """The trained model in the input's format (MIDUS with its remote code, or plain Llama), the
    tokenizer, and the input's recipe; written to a temporary sibling and renamed at the end."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.is_fsdp_enabled:  # every process takes part in gathering the full weights
        state_dict = trainer.accelerator.get_state_dict(trainer.model)
        model = unsharded(model, state_dict) if trainer.args.should_save else None
    if not trainer.args.should_save:
        return
    with atomic_dir(out) as folder:
        save_model(model.to(dtype), tokenizer, folder)
        recipe = Path(source) / RECIPE_FILE
        if recipe.is_file():
            shutil.copy(recipe, folder / RECIPE_FILE)


def unsharded(model, state_dict: dict):
    """A plain copy of an FSDP-sharded model holding its gathered full weights (saving the sharded
    module itself would ship FSDP's classes as the model's code)."""
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(model.config)
    plain.load_state_dict(state_dict, assign=True)
    plain.tie_weights()
    return plain
