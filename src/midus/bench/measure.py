"""Measuring one model: parameters, peak memory, training step time, prefill and decode latency.

Timing: `warmup` untimed runs, then `repeats` timed runs (rounds); each figure is reported as its
median with the quartiles and min/max of the runs. CPU: `time.perf_counter`; CUDA: CUDA events, synchronised.

Peak memory, always including the weights:
- CUDA: `torch.cuda.max_memory_allocated` over the phase (reset before it).
- CPU: the peak resident set size of the process over the phase (`VmHWM`, reset before the phase via
  `/proc/self/clear_refs` after returning freed heap to the OS with `malloc_trim`), minus the resident
  size before the model was built. It counts every byte the process touched (allocator slack, the
  page-cache-backed weights of a memory-mapped checkpoint), so it is only measured with one fresh
  process per model (`bench --isolate`: `measure`), inference first, then training.

By default (`measure_interleaved`) all models are loaded in one process and take turns, in rounds.

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
from typing import ClassVar

from pydantic import BaseModel, Field, model_validator
from transformers import StaticCache

from ..checkpoint import DtypeName
from ..errors import UsageError
from ..load import LoadedModel, load_model, max_positions
from ..model.compat import CACHE_ARG, OUTPUT_CACHE
from ..parameters import count_parameters, new_block_parameter_names
from ..schema import YamlModel


class BenchSettings(YamlModel):
    """What `midus bench` measures; every field is a `--set` key (and a flag of its own)."""

    kind: ClassVar[str] = "bench settings"

    device: str = Field("cpu", description="cpu, cuda, cuda:N")
    dtype: DtypeName = Field("float32", description="dtype of every model")
    batch_size: int = Field(1, ge=1, description="sequences per step")
    train_seq_len: int = Field(256, ge=2, description="tokens per sequence in the training step")
    prefill_len: int = Field(256, ge=1, description="prompt tokens of the prefill")
    decode_tokens: int = Field(32, ge=1, description="tokens generated one by one with the KV cache")
    warmup: int = Field(1, ge=0, description="untimed runs before timing")
    repeats: int = Field(5, ge=1, description="timed runs per model (rounds, when models take turns); "
                                              "figures are medians over them")
    seed: int = Field(0, description="random weights (where a model has none) and random input tokens")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's)")
    compile: bool = Field(False, description="inference through torch.compile(fullgraph=True) of the forward with "
                                             "a static KV cache (inductor; CUDA graphs on a GPU); the warm-up runs "
                                             "compile it (warmup >= 1). Training stays eager")
    base: str | None = Field(None, description="recipes only: grow them on this base instead (e.g. a folder "
                                               "holding just the base's config.json: random weights)")

    @model_validator(mode="after")
    def _compile_needs_a_warmup(self):
        if self.compile and self.warmup < 1:  # else the first timed run would time the compiler
            raise ValueError("compile: the warm-up runs compile the forward; set warmup >= 1")
        return self


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
    grown_from: str | None = Field(description="the base it was grown from (its recipe's `base`), when known")
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

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.available = self.cuda or Path("/proc/self/clear_refs").exists()
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


# ---------------------------------------------------------------------------------------- phases
def check_lengths(positions: int, settings: BenchSettings, name: str) -> None:
    needed = {"train_seq_len": settings.train_seq_len,
              "prefill_len + decode_tokens": settings.prefill_len + settings.decode_tokens}
    for what, length in needed.items():
        if positions and length > positions:
            raise UsageError(f"{name}: {what} = {length} is beyond the model's {positions} positions "
                             "(max_position_embeddings)")


class Subject:
    """One loaded model with its inputs: one inference run (prefill, then decode) or one training step
    (forward, backward, AdamW step, zero_grad) at a time, so that models can take turns."""

    def __init__(self, name: str, settings: BenchSettings, device: torch.device):
        self.name, self.settings, self.device = name, settings, device
        self.loaded = load_model(name, dtype=settings.dtype, device=settings.device, allow_random=True,
                                 seed=settings.seed, base=settings.base)
        self.model = self.loaded.model
        check_lengths(max_positions(self.model), settings, name)
        generator = torch.Generator().manual_seed(settings.seed)
        vocab, batch = self.model.config.vocab_size, settings.batch_size
        self.prompt = torch.randint(vocab, (batch, settings.prefill_len), generator=generator).to(device)
        self.train_ids = torch.randint(vocab, (batch, settings.train_seq_len), generator=generator).to(device)
        self.optimizer = None
        self.forward, self.static_cache, self.generated = self.model, None, None
        if settings.compile:
            mode = "reduce-overhead" if device.type == "cuda" else "default"  # CUDA graphs on a GPU
            self.forward = torch.compile(self.model.forward, fullgraph=True, dynamic=False, mode=mode)
            self.static_cache = StaticCache(config=self.model.config,
                                            max_cache_len=settings.prefill_len + settings.decode_tokens)

    def inference(self) -> tuple[float, float]:
        """Seconds of the prefill and seconds per decoded token, greedy, with the KV cache (a fresh
        dynamic one, or the static one emptied, when compiled)."""
        state = {}
        cache = {}
        if self.static_cache is not None:
            self.static_cache.reset()
            cache = {CACHE_ARG: self.static_cache}

        def prefill():
            state["out"] = self.forward(input_ids=self.prompt, use_cache=True, **cache)

        def decode():
            out, generated = state["out"], []
            for _ in range(self.settings.decode_tokens):
                generated.append(out.logits[:, -1:].argmax(-1))
                out = self.forward(input_ids=generated[-1], use_cache=True, **{CACHE_ARG: getattr(out, OUTPUT_CACHE)})
            self.generated = torch.cat(generated, dim=1)  # this run's greedy tokens (compiled = eager: tested)

        with torch.no_grad():
            return timed(prefill, self.device), timed(decode, self.device) / self.settings.decode_tokens

    def train_step(self) -> float:
        if self.optimizer is None:
            self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-5)

        def step():
            loss = self.model(input_ids=self.train_ids, labels=self.train_ids, use_cache=False).loss
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

        self.model.train()
        try:
            return timed(step, self.device)
        finally:
            self.model.eval()

    def held_bytes(self) -> int:
        """Bytes this model keeps between runs: weights, buffers, optimizer state."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        if self.optimizer is not None:
            tensors += [t for state in self.optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def measurement(self, train: list[float], prefill: list[float], decode: list[float],
                    train_mb: float | None, inference_mb: float | None) -> "Measurement":
        settings, loaded, model = self.settings, self.loaded, self.model
        train_s, prefill_s, decode_s = Stat.of(train), Stat.of(prefill), Stat.of(decode)
        tokens = settings.batch_size
        return Measurement(
            name=self.name, source=loaded.source, weights=loaded.weights, model_type=model.config.model_type,
            layers=model.config.num_hidden_layers, grown_from=loaded.recipe.base if loaded.recipe else None,
            params_total=count_parameters(model), params_added=added_parameters(loaded),
            train_peak_mb=train_mb, inference_peak_mb=inference_mb,
            train_step_s=train_s, prefill_s=prefill_s, decode_s_per_token=decode_s,
            train_tokens_per_s=tokens * settings.train_seq_len / train_s.median,
            prefill_tokens_per_s=tokens * settings.prefill_len / prefill_s.median,
            decode_tokens_per_s=tokens / decode_s.median,
        )


def added_parameters(loaded: LoadedModel) -> int | None:
    if loaded.added_parameters is not None:
        return loaded.added_parameters
    if getattr(loaded.model.config, "layer_map", None) is None:
        return None
    params = dict(loaded.model.named_parameters())
    return sum(params[n].numel() for n in new_block_parameter_names(loaded.model))


@contextmanager
def torch_threads(threads: int | None):
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def measuring(settings: BenchSettings, models: int):
    """The run's CPU threads and, when compiling, a fresh dynamo cache with room for the graphs of every
    model (prefill into the cache before and after its lazy allocation, decode: three, four to spare):
    the models' forwards share code objects (transformers' wrappers), and the default limit of 8 graphs
    per code object is a hard error under fullgraph from the third model on."""
    with torch_threads(settings.threads):
        if not settings.compile:
            yield
            return
        torch._dynamo.reset()  # graphs of an earlier bench in this process hold their models and count
        limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
        with torch._dynamo.config.patch(**{limit: max(8, 4 * models)}):
            yield


def check_device(settings: BenchSettings) -> torch.device:
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {settings.device}: CUDA is not available here; use --device cpu")
    return device


def measure(name: str, settings: BenchSettings) -> Measurement:
    """One model alone (in a fresh process: `bench --isolate`): `warmup` then `repeats` inference runs,
    then as many training steps, each phase's peak memory measured."""
    device = check_device(settings)
    with measuring(settings, 1):
        probe = MemoryProbe(device)
        subject = Subject(name, settings, device)
        with probe.phase() as inference_memory:
            for _ in range(settings.warmup):
                subject.inference()
            prefill, decode = zip(*[subject.inference() for _ in range(settings.repeats)])
        with probe.phase() as train_memory:
            for _ in range(settings.warmup):
                subject.train_step()
            train = [subject.train_step() for _ in range(settings.repeats)]
        return subject.measurement(train, list(prefill), list(decode), train_memory["mb"], inference_memory["mb"])


def measure_interleaved(names: list[str], settings: BenchSettings, progress=None) -> list[Measurement]:
    """All models in this process, taking turns: `warmup` untimed runs each, then `repeats` rounds in
    which every model runs once (the order rotating from round to round), inference rounds first, then
    training rounds. A burst of load on a shared machine hits every model alike, and sample r of one
    model is paired with sample r of another (bench's added cost per block uses that).
    Peak memory: CUDA only (the phase's peak above what was allocated before it, plus what the model
    itself holds); on the CPU one process's resident size cannot be split between models (None)."""
    device = check_device(settings)
    with measuring(settings, len(names)):
        subjects = [Subject(name, settings, device) for name in names]
        peaks = {"inference": [0.0] * len(subjects), "train": [0.0] * len(subjects)}
        samples = {"inference": [[] for _ in subjects], "train": [[] for _ in subjects]}
        for phase in ("inference", "train"):
            for i, subject in enumerate(subjects):
                for _ in range(settings.warmup):
                    _run_tracking_peak(subject, phase, peaks[phase], i)
            for round_ in range(settings.repeats):
                for step in range(len(subjects)):
                    i = (round_ + step) % len(subjects)
                    samples[phase][i].append(_run_tracking_peak(subjects[i], phase, peaks[phase], i))
                if progress is not None:
                    progress()
        cuda = device.type == "cuda"
        return [subject.measurement(samples["train"][i], *map(list, zip(*samples["inference"][i])),
                                    peaks["train"][i] if cuda else None, peaks["inference"][i] if cuda else None)
                for i, subject in enumerate(subjects)]


def _run_tracking_peak(subject: Subject, phase: str, peaks: list[float], i: int):
    run = subject.inference if phase == "inference" else subject.train_step
    if subject.device.type != "cuda":
        return run()
    torch.cuda.synchronize()
    before, held = torch.cuda.memory_allocated(), subject.held_bytes()  # held before: AdamW's state is new in step 1
    torch.cuda.reset_peak_memory_stats()
    result = run()
    torch.cuda.synchronize()
    peaks[i] = max(peaks[i], (torch.cuda.max_memory_allocated() - before + held) / 2**20)
    return result
