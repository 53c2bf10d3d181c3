"""The run folder: one run per folder, checkpoints published atomically, exact resume.

    OUT/.lock                held by the live run (`lock.folder_lock`): a second one is refused
    OUT/train_config.yaml    the run's config (a folder holding another run is refused)
    OUT/checkpoint-<step>/   complete checkpoints only: each is written under OUT/.staging/, its files'
                             checksums recorded (checksums.sha256), then renamed into place
    OUT/metrics.jsonl        one JSON record per log step / evaluation
    OUT/loss.png             the loss curve
    OUT/model/               the final model, written when the budget is spent
"""

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import yaml

from ..checkpoint import CHECKSUMS_FILE, atomic_write_text, checksum_problem, missing_parents, remove_if_empty
from ..errors import MidusError, UsageError, warn
from .config import TrainConfig, TrainConfigError
from .lock import LOCK_FILE, clear_but_lock, folder_lock

CONFIG_FILE = "train_config.yaml"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
MODEL_DIR = "model"
STAGING_DIR = ".staging"
TRASH_PREFIX = ".trash-"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = CHECKSUMS_FILE  # written last, once every process has written its part


class RunFolder:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.staging = self.root / STAGING_DIR
        self.metrics = self.root / METRICS_FILE
        self.plot = self.root / PLOT_FILE
        self.model = self.root / MODEL_DIR
        self.config_file = self.root / CONFIG_FILE

    # --- one run per folder -------------------------------------------------------------------------

    @contextmanager
    def hold(self, config: TrainConfig, overwrite: bool):
        """The main process's hold on the folder for the whole run: its lock, then `prepare`. A run
        that fails before its first step leaves the folder as it found it (none, or empty)."""
        self.check_usable(config)
        created = [] if self.root.exists() else [self.root, *missing_parents(self.root)]
        was_empty = not self.root.exists() or not any(self.root.iterdir())
        self.root.mkdir(parents=True, exist_ok=True)
        with folder_lock(self.root, "midus train run"):
            try:
                self.prepare(config, overwrite, writer=True)
                yield
            except BaseException:
                if was_empty and not self.started():
                    self.remove_unstarted(created)  # under the lock: a refused second start never gets here
                raise

    def prepare(self, config: TrainConfig, overwrite: bool, writer: bool) -> None:
        """Make the folder ready for `config`: new, or the same run to resume. Another run in it is
        refused unless `overwrite` (then it is deleted). Only the `writer` process changes files,
        under the folder's lock (`hold`)."""
        self.check_usable(config)
        if self.root.is_dir() and any(p.name != LOCK_FILE for p in self.root.iterdir()):
            problem = self.different_run(config)
            if problem and not overwrite:
                raise UsageError(f"output_dir {self.root} {problem}; pass --overwrite to replace it, or choose another output_dir")
            if problem and writer:
                clear_but_lock(self.root)
        if not writer:
            return
        for leftover in [self.staging, *self.root.glob(f"{TRASH_PREFIX}*"), *self.root.glob(f".{MODEL_DIR}.tmp-*")]:
            shutil.rmtree(leftover, ignore_errors=True)  # debris of a run killed while saving
        atomic_write_text(self.config_file, f"# midus train run {config.fingerprint()}\n" + config.to_yaml())

    def check_usable(self, config: TrainConfig) -> None:
        check_not_inside(self.root, config)
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"output_dir {self.root} is a file, not a folder")

    def started(self) -> bool:
        """Whether the run got as far as its first logged step, checkpoint or final model."""
        return self.metrics.is_file() or self.model.is_dir() or any(self.root.glob("checkpoint-*"))

    def remove_unstarted(self, created: list[Path]) -> None:
        """Undo a run that failed before its first step: the folder (and the parents it needed) go
        if this run created them, else it is emptied again."""
        if created:
            shutil.rmtree(self.root, ignore_errors=True)
            for parent in created[1:]:  # deepest first
                remove_if_empty(parent)
        else:
            clear_but_lock(self.root)
            (self.root / LOCK_FILE).unlink(missing_ok=True)

    def different_run(self, config: TrainConfig) -> str | None:
        """Why the folder cannot host `config`'s run, or None if it holds that very run."""
        if not self.config_file.is_file():
            return "exists and holds no midus train run"
        if not (self.checkpoints() or self.metrics.is_file() or self.model.is_dir()):
            return None  # a run that failed before its first step: nothing to keep
        try:
            stored = TrainConfig.parse(yaml.safe_load(self.config_file.read_text()), source=str(self.config_file))
        except (TrainConfigError, yaml.YAMLError):
            return "holds a run whose config is unreadable"
        old, new = stored.identity(), config.identity()
        if old != new:
            fields = [key for key in new if old.get(key) != new.get(key)]
            return f"holds a different run (differs in: {', '.join(fields)})"
        return None

    # --- checkpoints ---------------------------------------------------------------------------------

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        found = [path for path in self.root.glob("checkpoint-*")
                 if CHECKPOINT.match(path.name) and (path / COMPLETE_MARKER).is_file()]
        return sorted(found, key=checkpoint_step)

    def last_checkpoint(self) -> Path | None:
        return (self.checkpoints() or [None])[-1]

    def resume_checkpoint(self) -> Path | None:
        """The newest checkpoint whose files still match the checksums recorded when it was written
        (one truncated, bit-flipped or lost since is skipped with a warning), or None if there is none."""
        found = sorted((p for p in self.root.glob("checkpoint-*") if CHECKPOINT.match(p.name)), key=checkpoint_step)
        for path in reversed(found):
            problem = checksum_problem(path)
            if problem is None:
                return path
            warn(f"skipping checkpoint {path}: {problem}")
        if found:
            raise MidusError(f"no intact checkpoint left in {self.root}: {', '.join(p.name for p in found)} fail their "
                             "checksums (see the warnings); pass --overwrite to start the run over")
        return None

    def publish(self, staged: Path, keep: int) -> Path:
        """Move a fully written checkpoint from the staging folder into place (one atomic rename),
        then delete all but the `keep` newest."""
        target = self.root / staged.name
        if target.exists():
            self.discard(target)
        os.replace(staged, target)
        for old in self.checkpoints()[:-keep]:
            self.discard(old)
        return target

    def discard(self, path: Path) -> None:
        """Delete a folder without ever leaving it half-deleted under its own name."""
        trash = path.with_name(TRASH_PREFIX + path.name)
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    # --- metrics -------------------------------------------------------------------------------------

    def truncate_metrics(self, step: int) -> None:
        """Keep the records up to `step` (the checkpoint resumed from); the resumed run writes the rest."""
        if not self.metrics.is_file():
            return
        kept = [line for line in self.metrics.read_text().splitlines() if record_step(line) <= step]
        atomic_write_text(self.metrics, "".join(line + "\n" for line in kept))

    def records(self) -> list[dict]:
        lines = self.metrics.read_text().splitlines() if self.metrics.is_file() else []
        return [json.loads(line) for line in lines if record_step(line) < TORN]


TORN = 2**62


def checkpoint_step(path: Path) -> int:
    return int(CHECKPOINT.match(path.name).group(1))


def record_step(line: str) -> int:
    """The step of a metrics line, or TORN for a torn / unreadable line (so it is dropped)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return TORN


def check_not_inside(root: Path, config: TrainConfig) -> None:
    """The run folder may be replaced with --overwrite: it must not hold the model or the data."""
    root = root.expanduser().resolve()
    inputs = [config.model, config.tokenizer, *(config.data.files or []), *(config.data.eval_files or [])]
    for item in filter(None, inputs):
        path = Path(item).expanduser()
        if path.exists() and (path.resolve() == root or root in path.resolve().parents):
            raise UsageError(f"output_dir {root} contains the input {item}; choose an output_dir of its own")
