"""The engine: the Hugging Face Trainer with the paper's optimiser rule, atomic checkpoints, a stop on
a non-finite loss, per-group learning rates and tokens/s in the logs, and a tokens/s progress bar."""

import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback

from ..errors import MidusError
from .optim import build_optimizer, build_scheduler
from .rundir import RunFolder


class NonFiniteLoss(MidusError):
    """The loss became NaN or inf: training stops before the weights are updated."""


class MidusTrainer(Trainer):
    def __init__(self, *args, train_config, run: RunFolder, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_config, self.run = train_config, run
        self.step_loss = None  # sum of this step's micro-batch losses (this process)
        self.clock = None  # (step, time) of the previous training record, or of the (re)start
        self.add_callback(TrainingClock(self))

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

    # --- atomic checkpoints --------------------------------------------------------------------------

    def _save_checkpoint(self, model, trial):
        """The Trainer writes the checkpoint into the staging folder (args.output_dir); once every
        process has written its part, the main process renames it into the run folder."""
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            staged = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            self.run.publish(staged, keep=self.train_config.keep_checkpoints)
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


class TrainingClock(TrainerCallback):
    """Starts the tokens/s clock where training (re)starts: after a resume, at the resumed step."""

    def __init__(self, trainer: MidusTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.clock = (state.global_step, time.time())


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
        if self.bar is not None:
            self.bar.close()
            self.bar = None
