"""Measuring one model: parameters, peak memory, training step time, prefill and decode latency.

Timing: `warmup` untimed runs, then `repeats` timed runs; each figure is reported as its median with
the quartiles and min/max of the runs. CPU: `time.perf_counter`; CUDA: CUDA events, synchronised.

Peak memory, always including the weights:
- CUDA: `torch.cuda.max_memory_allocated` over the phase (reset before it).
- CPU: the peak resident set size of the process over the phase (`VmHWM`, reset before the phase via
  `/proc/self/clear_refs` after returning freed heap to the OS with `malloc_trim`), minus the resident
  size before the model was built. It counts every byte the process touched (allocator slack, the
  page-cache-backed weights of a memory-mapped checkpoint), so each model is measured in its own
  fresh process (`bench.run_isolated`), inference first, then training.

Phases: inference = prefill of `prefill_len` tokens with the KV cache, then `decode_tokens` greedy
steps of one token each; training = forward + backward + AdamW step on `train_seq_len` tokens.
"""

import ctypes
import gc
import re
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from ..errors import UsageError
from ..load import LoadedModel, load_model, max_positions
from ..model.compat import CACHE_ARG, OUTPUT_CACHE
from ..parameters import count_parameters, new_block_parameter_names


class BenchSettings(BaseModel):
    device: str = Field("cpu", description="cpu, cuda, cuda:N")
    dtype: str = Field("float32", description="float32 | bfloat16 | float16, for every model")
    batch_size: int = Field(1, ge=1, description="sequences per step")
    train_seq_len: int = Field(256, ge=2, description="tokens per sequence in the training step")
    prefill_len: int = Field(256, ge=1, description="prompt tokens of the prefill")
    decode_tokens: int = Field(32, ge=1, description="tokens generated one by one with the KV cache")
    warmup: int = Field(1, ge=0, description="untimed runs before timing")
    repeats: int = Field(5, ge=1, description="timed runs; figures are medians over them")
    seed: int = Field(0, description="random weights (where a model has none) and random input tokens")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (None: torch's default)")
    base: str | None = Field(None, description="recipes only: grow them on this base instead (e.g. a folder "
                                               "holding just the base's config.json: random weights)")


class Stat(BaseModel):
    """Seconds: median and spread of the timed runs."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    samples: list[float]

    @classmethod
    def of(cls, samples: list[float]) -> "Stat":
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else samples * 3
        return cls(median=statistics.median(samples), q1=q1, q3=q3, min=min(samples), max=max(samples), samples=samples)


class Measurement(BaseModel):
    """Raw figures of one model (no ratios: those need the reference, see report.py)."""

    name: str
    source: str = Field(description="folder | hub | recipe")
    weights: str = Field(description="loaded | random (real shapes, seeded init)")
    model_type: str
    layers: int
    params_total: int
    params_added: int | None = Field(description="total minus the base's, when the base is known; else the "
                                                 "parameters of the blocks marked new in layer_map; else null")
    train_peak_mb: float | None = Field(description="peak memory of training steps (weights included), MiB")
    inference_peak_mb: float | None = Field(description="peak memory of prefill + decode (weights included), MiB")
    train_step_s: Stat
    prefill_s: Stat
    decode_s_per_token: Stat
    train_tokens_per_s: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float


# ---------------------------------------------------------------------------------------- memory
class MemoryProbe:
    """Peak memory of a phase, weights included (see the module docstring for the method)."""

    def __init__(self, device: torch.device, enabled: bool = True):
        self.cuda = device.type == "cuda"
        self.available = enabled and (self.cuda or Path("/proc/self/clear_refs").exists())
        self.baseline = 0 if self.cuda else _rss_kib()

    @staticmethod
    def method(device: str) -> str:
        if device.startswith("cuda"):
            return "torch.cuda.max_memory_allocated over the phase"
        return ("peak RSS over the phase (VmHWM reset via /proc/self/clear_refs after malloc_trim) minus RSS "
                "before the model was built; one fresh process per model")

    @contextmanager
    def phase(self):
        """Yields a dict whose "mb" is filled with the phase's peak (None where it cannot be measured)."""
        out = {"mb": None}
        gc.collect()
        if self.cuda and self.available:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif self.available:
            _malloc_trim()
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
        yield out
        if self.cuda and self.available:
            torch.cuda.synchronize()
            out["mb"] = torch.cuda.max_memory_allocated() / 2**20
        elif self.available:
            out["mb"] = (_status_kib("VmHWM") - self.baseline) / 1024


def _status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def _rss_kib() -> int:
    try:
        return _status_kib("VmRSS")
    except (OSError, AttributeError):
        return 0


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------------------- timing
def timed(run, device: torch.device) -> float:
    """Seconds taken by `run()`: CUDA events on a GPU, perf_counter on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000
    begin = time.perf_counter()
    run()
    return time.perf_counter() - begin


def repeat(run, settings: BenchSettings, device: torch.device) -> list[float]:
    for _ in range(settings.warmup):
        run()
    return [timed(run, device) for _ in range(settings.repeats)]


# ---------------------------------------------------------------------------------------- phases
def check_lengths(positions: int, settings: BenchSettings, name: str) -> None:
    needed = {"train_seq_len": settings.train_seq_len,
              "prefill_len + decode_tokens": settings.prefill_len + settings.decode_tokens}
    for what, length in needed.items():
        if positions and length > positions:
            raise UsageError(f"{name}: {what} = {length} is beyond the model's {positions} positions "
                             "(max_position_embeddings)")


def inference_runs(model, ids: torch.Tensor, settings: BenchSettings, device) -> tuple[list[float], list[float]]:
    """Prefill seconds and decode seconds per token, one of each per timed run."""
    prefill, decode = [], []

    def generate(record: bool):
        cache = {}

        def do_prefill():
            cache["out"] = model(input_ids=ids, use_cache=True)

        def do_decode():
            out = cache["out"]
            for _ in range(settings.decode_tokens):
                token = out.logits[:, -1:].argmax(-1)
                out = model(input_ids=token, use_cache=True, **{CACHE_ARG: getattr(out, OUTPUT_CACHE)})

        seconds = timed(do_prefill, device), timed(do_decode, device)
        if record:
            prefill.append(seconds[0])
            decode.append(seconds[1] / settings.decode_tokens)

    with torch.no_grad():
        for i in range(settings.warmup + settings.repeats):
            generate(record=i >= settings.warmup)
    return prefill, decode


def training_runs(model, ids: torch.Tensor, settings: BenchSettings, device) -> list[float]:
    """Seconds of one training step (forward, backward, AdamW step, zero_grad) per timed run."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    try:
        return repeat(step, settings, device)
    finally:
        model.eval()


def added_parameters(loaded: LoadedModel) -> int | None:
    if loaded.added_parameters is not None:
        return loaded.added_parameters
    if getattr(loaded.model.config, "layer_map", None) is None:
        return None
    params = dict(loaded.model.named_parameters())
    return sum(params[n].numel() for n in new_block_parameter_names(loaded.model))


def measure(name: str, settings: BenchSettings, *, memory: bool = True) -> Measurement:
    """Load (or grow, or build with random weights) `name` and measure it; `memory=False` skips the
    peak-memory figures (on the CPU they are only exact in a fresh process)."""
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {settings.device}: CUDA is not available here; use --device cpu")
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        return _measure(name, settings, device, MemoryProbe(device, enabled=memory))
    finally:
        torch.set_num_threads(threads)


def _measure(name: str, settings: BenchSettings, device: torch.device, probe: MemoryProbe) -> Measurement:
    loaded = load_model(name, dtype=settings.dtype, device=settings.device, allow_random=True, seed=settings.seed,
                        base=settings.base)
    model = loaded.model
    check_lengths(max_positions(model), settings, name)
    generator = torch.Generator().manual_seed(settings.seed)
    vocab = model.config.vocab_size
    prompt = torch.randint(vocab, (settings.batch_size, settings.prefill_len), generator=generator).to(device)
    train_ids = torch.randint(vocab, (settings.batch_size, settings.train_seq_len), generator=generator).to(device)

    with probe.phase() as inference_memory:
        prefill, decode = inference_runs(model, prompt, settings, device)
    with probe.phase() as train_memory:
        train = training_runs(model, train_ids, settings, device)

    train_s, prefill_s, decode_s = Stat.of(train), Stat.of(prefill), Stat.of(decode)
    tokens = settings.batch_size
    return Measurement(
        name=name, source=loaded.source, weights=loaded.weights, model_type=model.config.model_type,
        layers=model.config.num_hidden_layers, params_total=count_parameters(model),
        params_added=added_parameters(loaded),
        train_peak_mb=train_memory["mb"], inference_peak_mb=inference_memory["mb"],
        train_step_s=train_s, prefill_s=prefill_s, decode_s_per_token=decode_s,
        train_tokens_per_s=tokens * settings.train_seq_len / train_s.median,
        prefill_tokens_per_s=tokens * settings.prefill_len / prefill_s.median,
        decode_tokens_per_s=tokens / decode_s.median,
    )
