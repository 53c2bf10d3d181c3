"""Loading bases and writing checkpoints: hub id or folder in, complete HF folder out, atomically."""

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .errors import MidusError, UsageError
from .model.configuration_midus import BASE_MODEL_TYPES

# decoder families whose blocks are Llama blocks (norm, q/k/v/o attention, gated FFN)
SUPPORTED_MODEL_TYPES = BASE_MODEL_TYPES
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DtypeName = Literal[tuple(DTYPES)]  # a settings field naming one of them
MIDUS_AUTO_MAP = {
    "AutoConfig": "configuration_midus.MidusConfig",
    "AutoModel": "modeling_midus.MidusModel",
    "AutoModelForCausalLM": "modeling_midus.MidusForCausalLM",
}


HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def resolve(name: str) -> str:
    """A local folder (checked) or a hub id; anything else is an error."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise MidusError(f"{name}: not a Hugging Face model folder (no config.json)")
        return str(path)
    if not HUB_ID.match(name):
        raise MidusError(f"{name}: no such folder")
    return name


def load_config(name: str):
    """The config of a hub id or local folder, with a one-line error for every way it can fail."""
    source = resolve(name)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=False)  # the installed midus classes
    except (OSError, ValueError, TypeError, StrictDataclassError) as error:
        where = "its config.json is unreadable" if Path(source).exists() else "not a local folder, and the hub could not provide it"
        raise MidusError(f"{name}: {where} ({first_line(error)})") from None


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or of its cause's (validation errors wrap the reason)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def check_family(config, name: str) -> None:
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise MidusError(
            f"base {name}: model_type {config.model_type!r} is not a supported decoder; "
            f"supported Llama-family decoders: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim % 2:
        raise MidusError(f"base {name}: head_dim={head_dim} is odd; RoPE and the memory's product keys split "
                         "each head in two halves, so it must be even")


def load_base(name: str, dtype: str = "float32") -> tuple[PreTrainedModel, object]:
    """A Llama-family base model and its tokenizer from a hub id or a local folder."""
    config = load_config(name)
    check_family(config, name)
    model = load_weights(resolve(name), f"base {name}", dtype=DTYPES[dtype])
    return model, load_tokenizer(name)


PICKLE_ENV = "MIDUS_ALLOW_PICKLE_WEIGHTS"  # set by `midus --allow-pickle-weights`
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")


def pickle_weights_allowed() -> bool:
    return os.environ.get(PICKLE_ENV) == "1"


def check_weight_format(source: str, what: str) -> None:
    """A folder whose weights are pickle files only is refused unless `--allow-pickle-weights`."""
    folder = Path(source)
    if not pickle_weights_allowed() and folder.is_dir() and not any(folder.glob("*.safetensors")) \
            and any(next(folder.glob(pattern), None) for pattern in PICKLE_WEIGHTS):
        raise MidusError(f"{what}: its weights are pickle files (*.bin), which can run code when loaded; convert them "
                         "to safetensors, or pass `midus --allow-pickle-weights` if you trust them")


def load_weights(source: str, what: str, **kwargs) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained(source)` as midus loads every model: with the installed
    classes, never code shipped in the folder (a MIDUS folder's modeling_midus.py is not imported),
    and weights from safetensors only, since pickle files can run code when loaded, unless the user
    passed `midus --allow-pickle-weights`. `what` names the model in the one-line errors."""
    check_weight_format(source, what)
    formats = {} if pickle_weights_allowed() else {"use_safetensors": True}
    try:
        return AutoModelForCausalLM.from_pretrained(source, trust_remote_code=False, **formats, **kwargs)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise MidusError(f"{what}: cannot load its weights ({first_line(error)})") from None


def load_tokenizer(name: str):
    """The tokenizer of a hub id or local folder (every command loads it here), or a one-line error."""
    try:
        return AutoTokenizer.from_pretrained(resolve(name))
    except (OSError, ValueError, TypeError) as error:
        raise MidusError(f"no usable tokenizer in {name} ({first_line(error)})") from None


def check_out_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UsageError(f"output {out_dir} exists and is not empty; choose a new folder")
    return out_dir


@contextmanager
def atomic_dir(out_dir: str | Path):
    """Yield a temporary sibling folder; on success it becomes `out_dir`, on failure it is removed
    (and a failed write, such as a full disk, becomes a one-line MidusError naming the file)."""
    out_dir = check_out_dir(out_dir)
    created = missing_parents(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    except OSError as error:
        raise write_error(error, out_dir) from None
    try:
        yield tmp
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        tmp.rename(out_dir)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in created:  # parents made for the output, deepest first, if still empty
            remove_if_empty(parent)
        if isinstance(error, OSError):
            raise write_error(error, out_dir) from None
        raise


def missing_parents(path: Path) -> list[Path]:
    """The ancestors of `path` that do not exist yet, deepest first."""
    return [parent for parent in path.absolute().parents if not parent.exists()]


def remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def write_error(error: OSError, where: str | Path, outcome: str | None = None) -> MidusError:
    """A failed write (a full disk, a quota, permissions) as one line: what failed, where, and what
    became of the output (default: nothing was written to `where`)."""
    place = error.filename or where
    reason = error.strerror or first_line(error)
    return MidusError(f"cannot write {place}: {reason}; {outcome or f'nothing was written to {where}'}")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a small file whole or not at all: a temporary sibling renamed over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_files(out_dir: str | Path, writers: dict[str, Callable[[Path], object]]) -> list[Path]:
    """Write report files into `out_dir` (created if missing; other files in it stay): every
    `writers[name](path)` writes a temporary sibling first, and only when all of them succeeded are they
    renamed into place, so a failed write (a full disk) replaces nothing and leaves no folder it made."""
    out_dir = Path(out_dir)
    created = [] if out_dir.exists() else [out_dir, *missing_parents(out_dir)]
    staged = {name: out_dir / f".tmp-{os.getpid()}-{name}" for name in writers}  # the suffix kept (plots)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, write in writers.items():
            write(staged[name])
        for name, tmp in staged.items():
            os.replace(tmp, out_dir / name)
    except BaseException as error:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        for folder in created:  # deepest first
            remove_if_empty(folder)
        if isinstance(error, OSError):
            raise write_error(error, out_dir, f"nothing in {out_dir} was replaced") from None
        raise
    return [out_dir / name for name in writers]


# --- checksums: a checkpoint records sha256 digests of its files when written ----------------------

CHECKSUMS_FILE = "checksums.sha256"  # `sha256sum -c checksums.sha256` checks it too


def file_digest(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def write_checksums(folder: str | Path) -> None:
    """Record the digest of every file under `folder` (written last: a folder with it is complete)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS_FILE)
    lines = "".join(f"{file_digest(p)}  {p.relative_to(folder).as_posix()}\n" for p in files)
    atomic_write_text(folder / CHECKSUMS_FILE, lines)


def checksum_problem(folder: str | Path) -> str | None:
    """Why `folder` no longer matches the checksums recorded when it was written, or None if it does."""
    folder = Path(folder)
    try:
        lines = (folder / CHECKSUMS_FILE).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return f"no readable {CHECKSUMS_FILE} (an unfinished or damaged save)"
    for line in lines:
        digest, sep, name = line.partition("  ")
        path = folder / name
        if not sep or not path.is_file():
            return f"{name or line!r} is missing"
        try:
            if file_digest(path) != digest:
                return f"{name} does not match its checksum"
        except OSError as error:
            return f"{name} is unreadable ({error.strerror})"
    return None


def save_model(model: PreTrainedModel, tokenizer, folder: Path, max_shard_size: str = "500MB") -> None:
    """save_pretrained with sharded safetensors; a MIDUS model ships its code and a full auto_map; a model
    under a LoRA adapter (PEFT) saves the adapter only (`midus merge-adapter` merges it)."""
    if getattr(model, "peft_config", None):
        model.save_pretrained(folder)
    else:
        if model.config.model_type == "midus":
            model.config.auto_map = dict(MIDUS_AUTO_MAP)
        model.save_pretrained(folder, max_shard_size=max_shard_size)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
