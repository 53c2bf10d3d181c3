"""The engine: the Hugging Face Trainer with the paper's optimiser rule, atomic checksummed checkpoints,
a stop on preemption (with a checkpoint at the step reached) and on a non-finite loss, per-group
learning rates and tokens/s in the logs, and a tokens/s progress bar."""

import json
import math
import shutil
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback

from ..checkpoint import write_checksums, write_error
from ..errors import MidusError
from .memory_probe import memory_probe
from .optim import build_optimizer, build_scheduler
from .preemption import PreemptionFlag
from .rundir import RunFolder


def restore_indexed_cpu(storage, location: str):
    """torch restores storages tagged "cpu" but not "cpu:<index>". Before transformers 5.18 the
    Trainer resumes a multi-process CPU run's optimizer with map_location=args.device, which is
    "cpu:<rank>" under torchrun; this maps it to plain CPU (through torch's public registry)."""
    return storage if location.startswith("cpu:") else None


torch.serialization.register_package(100, lambda obj: None, restore_indexed_cpu)


class NonFiniteLoss(MidusError):
    """The loss became NaN or inf: training stops before the weights are updated."""


class MidusTrainer(Trainer):
    def __init__(self, *args, train_config, run: RunFolder, resume: Path | None, preemption: PreemptionFlag, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_config, self.run = train_config, run
        self.step_loss = None  # sum of this step's micro-batch losses (this process)
        self.clock = None  # (step, time) of the previous training record, or of the (re)start
        self.add_callback(TrainingClock(self, resume))
        self.preemption = PreemptionCallback(self, preemption)
        self.add_callback(self.preemption)

    # --- FSDP2: accelerate's plugin, also on the CPU ---------------------------------------------------

    def create_accelerator_and_postprocess(self) -> None:
        """FSDP2 through accelerate's plugin, each block of the model (decoder, memory, pkm) a unit.
        accelerate switches the plugin on only for accelerator devices; on the CPU (gloo) it is
        switched on here, so that the same FSDP2 path (accelerate's fully_shard per block, its
        distributed checkpoints) runs there as on GPUs."""
        super().create_accelerator_and_postprocess()
        if self.args.fsdp_plugin_args is None:
            return
        state = self.accelerator.state
        if state.distributed_type == DistributedType.MULTI_CPU:
            state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
            # recorded in both states, as AcceleratorState does where it switches FSDP on itself
            state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.is_fsdp_enabled = True
        if self.is_fsdp_enabled and state.fsdp_plugin.transformer_cls_names_to_wrap is None:
            # the blocks this model has (_no_split_modules also names the block classes of other families)
            present = {type(module).__name__ for module in self.model.modules()}
            state.fsdp_plugin.transformer_cls_names_to_wrap = [name for name in self.model._no_split_modules if name in present]

    # --- the optimiser rule --------------------------------------------------------------------------

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            self.optimizer = build_optimizer(self.model if model is None else model, self.train_config)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            self.lr_scheduler = build_scheduler(optimizer or self.optimizer, self.train_config)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def learning_rates_at(self, step: int) -> dict[str, float]:
        """The learning rate each group used at optimizer step `step` (0-based)."""
        scheduler = self.lr_scheduler
        return {f"lr/{group['name']}": base * rule(step) for group, base, rule
                in zip(self.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas)}

    # --- stop on a non-finite loss, before the optimizer step ----------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.step_loss = loss if self.step_loss is None else self.step_loss + loss
        if self.accelerator.sync_gradients:  # the step's last micro-batch: the optimizer step comes next
            step_loss, self.step_loss = self.accelerator.reduce(self.step_loss.detach().clone(), "sum"), None
            if not torch.isfinite(step_loss):
                last = self.run.last_checkpoint()
                raise NonFiniteLoss(
                    f"the loss became {step_loss.item()} at step {self.state.global_step + 1}; stopped before updating "
                    f"the weights; last good checkpoint: {last or 'none'}. Lower lr, check the data, or use precision fp32")
        return loss

    # --- evaluation: the held-out loss, and what the memory contributes ------------------------------

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.train_config.memory_probe_sequences:
            self.model.eval()
            batches = first_sequences(dataloader, math.ceil(self.train_config.memory_probe_sequences / self.args.world_size))
            probe = memory_probe(self.model, batches, self.held_out_nll, self.summed_over_processes)
            output.metrics.update({f"{metric_key_prefix}_memory_{key}": value for key, value in probe.items()})
        return output

    def held_out_nll(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token NLL and scored tokens of one held-out batch, at the training precision."""
        batch = self._prepare_inputs(batch)
        with self.compute_loss_context_manager():
            logits = self.model(input_ids=batch["input_ids"], use_cache=False).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        nll = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
        return nll, (labels != -100).sum()

    def summed_over_processes(self, values: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(values.to(self.args.device), "sum").cpu()

    # --- atomic, checksummed checkpoints -------------------------------------------------------------

    def _save_checkpoint(self, model, trial):
        """The Trainer writes the checkpoint into the staging folder (args.output_dir), with each
        process's loss since the last log; once every process has written its part, the main process
        records the files' checksums and renames the folder into the run folder. A failed write
        (a full disk) removes the staged folder and stops with one line; published ones stay intact."""
        staged = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        try:
            super()._save_checkpoint(model, trial)
            write_loss_window(self, staged)
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                write_checksums(staged)
                self.run.publish(staged, keep=self.train_config.keep_checkpoints)
        except OSError as error:
            shutil.rmtree(staged, ignore_errors=True)
            last = self.run.last_checkpoint()
            raise write_error(error, staged, f"{staged.name} was not saved; the last complete checkpoint "
                                             f"({last or 'none'}) is intact") from None
        self.accelerator.wait_for_everyone()

    # --- logs: per-group learning rates, tokens, tokens/s, perplexity --------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        step = self.state.global_step
        if "loss" in logs:
            now = time.time()
            last_step, last_time = self.clock
            tokens_per_step = self.train_config.tokens_per_step
            logs["tokens"] = step * tokens_per_step
            if now > last_time and step > last_step:
                logs["tokens_per_s"] = (step - last_step) * tokens_per_step / (now - last_time)
            logs.update(self.learning_rates_at(step - 1))
            self.clock = (step, now)
        if "eval_loss" in logs:
            logs["eval_ppl"] = math.exp(logs["eval_loss"]) if logs["eval_loss"] < 700 else math.inf
        super().log(logs, start_time)


def first_sequences(batches, count: int) -> list[dict]:
    """The batches holding the first `count` sequences (the last one cut to size)."""
    taken = []
    for batch in batches:
        if count <= 0:
            break
        taken.append({key: value[:count] for key, value in batch.items()})
        count -= len(batch["input_ids"])
    return taken


class TrainingClock(TrainerCallback):
    """Starts the tokens/s clock where training (re)starts: after a resume, at the resumed step, with
    the loss summed since the last log restored from the checkpoint (a preemption checkpoint can fall
    between two logs), so that the resumed run logs what an unbroken one does."""

    def __init__(self, trainer: MidusTrainer, resume: Path | None):
        self.trainer, self.resume = trainer, resume

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.clock = (state.global_step, time.time())
        if self.resume is not None:
            read_loss_window(self.trainer, self.resume)


def loss_window_file(trainer: MidusTrainer) -> str:
    return f"loss_window_{trainer.args.process_index}.json"


def write_loss_window(trainer: MidusTrainer, folder: Path) -> None:
    window = {"loss_sum": trainer._tr_loss.item(), "last_logged_step": trainer._globalstep_last_logged}
    (folder / loss_window_file(trainer)).write_text(json.dumps(window) + "\n")


def read_loss_window(trainer: MidusTrainer, folder: Path) -> None:
    path = folder / loss_window_file(trainer)
    if path.is_file():  # absent when the process count changed: the first log then averages fewer steps
        window = json.loads(path.read_text())
        trainer._tr_loss.fill_(window["loss_sum"])
        trainer._globalstep_last_logged = window["last_logged_step"]


class PreemptionCallback(TrainerCallback):
    """At the end of every optimizer step, the processes agree whether any of them received a
    preemption signal; if so, every process saves a checkpoint at this step and training stops."""

    def __init__(self, trainer: MidusTrainer, flag: PreemptionFlag):
        self.trainer, self.flag = trainer, flag
        self.stopped_by: str | None = None  # the signal's name, once training stopped for it

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            return  # the run ends here anyway
        accelerator = self.trainer.accelerator
        received = torch.tensor([self.flag.received or 0], device=accelerator.device)
        signum = int(accelerator.gather(received).max())
        if signum:
            self.stopped_by = signal.Signals(signum).name
            control.should_save = True
            control.should_training_stop = True


class RunCallback(TrainerCallback):
    """On the main process: the metrics JSONL and a progress bar in tokens with tokens/s and ETA."""

    def __init__(self, run: RunFolder, tokens_per_step: int):
        self.run, self.tokens_per_step = run, tokens_per_step
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps * self.tokens_per_step, initial=state.global_step * self.tokens_per_step,
                            unit="tok", unit_scale=True, desc="train", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(self.tokens_per_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        kind = "train" if "loss" in logs else "eval" if "eval_loss" in logs else "summary"
        with self.run.metrics.open("a") as file:
            file.write(json.dumps({"step": state.global_step, "kind": kind, **logs}) + "\n")
        if self.bar is not None and kind != "summary":
            self.bar.set_postfix({key: f"{logs[key]:.4g}" for key in ("loss", "eval_loss") if key in logs}, refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        """End the bar's line (also when training fails, so that the error gets a line of its own)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
