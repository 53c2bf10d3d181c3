"""Benchmarking models side by side: in rounds in this process, or each in a fresh one (`--isolate`)."""

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import MidusError, UsageError
from ..load import check_model_name
from ..report import write_report_files
from .measure import BenchSettings, Measurement, MemoryProbe, check_lengths, measure_interleaved
from .report import BenchReport, build_report


def run_isolated(name: str, settings: BenchSettings) -> Measurement:
    """`measure` in a fresh Python process (its own allocator and peak-RSS counter)."""
    with tempfile.TemporaryDirectory(prefix="midus-bench-") as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "midus.bench.worker", str(result), name, settings.model_dump_json()]
        process = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if process.returncode != 0 or not result.exists():
            tail = (process.stderr.strip().splitlines() or ["no output"])[-1]
            raise MidusError(f"{name}: the measuring process failed ({tail})")
        payload = json.loads(result.read_text())
    if "error" in payload:
        kind = UsageError if payload["exit_code"] == UsageError.exit_code else MidusError
        raise kind(payload["error"])
    return Measurement.model_validate(payload["measurement"])


def environment(settings: BenchSettings, isolate: bool) -> dict:
    device = torch.device(settings.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" and torch.cuda.is_available() else \
        f"cpu ({platform.machine()}, {os.cpu_count()} cores)"
    memory = MemoryProbe.method(settings.device)
    if not isolate:
        memory = ("torch.cuda.max_memory_allocated over each run above what was allocated before it, plus the "
                  "model's weights and optimizer state" if device.type == "cuda" else
                  "not measured (on the CPU it needs one fresh process per model: --isolate)")
    return {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
            "python": platform.python_version(), "device_name": name,
            "threads": settings.threads or torch.get_num_threads(), "interleaved": not isolate,
            "memory_method": memory, "timer": "CUDA events" if device.type == "cuda" else "time.perf_counter"}


def bench(names: list[str], settings: BenchSettings | None = None, *, reference: str | None = None,
          isolate: bool = False) -> BenchReport:
    """Measure every model and build the side-by-side report; `reference` (default: the first model)
    must be one of `names`. By default the models take turns in this process, in rounds (all are held
    in memory at once); `isolate` measures each in a fresh process instead (CPU memory figures)."""
    settings = settings or BenchSettings()
    if not names:
        raise UsageError("no models given")
    if len(set(names)) != len(names):
        raise UsageError("a model is listed twice")
    reference = reference or names[0]
    if reference not in names:
        raise UsageError(f"reference {reference!r} is not among the models; list it as a MODEL too, "
                         f"so that it is measured in the same run")
    for name in names:
        check_lengths(check_model_name(name, settings.base), settings, name)
    if isolate:
        with tqdm(names, desc="bench", unit="model") as bar:
            measurements = [run_isolated(name, settings) for name in bar]
    else:
        with tqdm(total=2 * settings.repeats, desc="bench", unit="round") as bar:
            measurements = measure_interleaved(names, settings, progress=bar.update)
    return build_report(measurements, reference, settings, environment(settings, isolate))


def write_bench(report: BenchReport, out_dir: str | Path) -> list[Path]:
    """bench.md, bench.json and bench.png in `out_dir` (created), all or none."""
    return write_report_files(out_dir, {"bench.md": report.to_markdown(), "bench.json": report.to_json() + "\n",
                                        "bench.png": report.plot})
