"""`midus bench MODEL...`: parameters, peak memory, training step time, prefill and decode latency of
folders, recipes or hub ids, side by side, with ratios to a reference measured in the same run."""

import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checkpoint import write_files
from ..errors import MidusError, UsageError
from ..load import check_model_name
from .measure import BenchSettings, Measurement, MemoryProbe, check_lengths, measure
from .report import RATIO_METRICS, SCHEMA, BenchReport, ModelBench, build_report


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
    if not isolate and device.type == "cpu":
        memory = "not measured (on the CPU it needs one fresh process per model)"
    return {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
            "python": platform.python_version(), "device_name": name,
            "threads": settings.threads or torch.get_num_threads(),
            "memory_method": memory, "timer": "CUDA events" if device.type == "cuda" else "time.perf_counter"}


def bench(names: list[str], settings: BenchSettings | None = None, *, reference: str | None = None,
          isolate: bool = True) -> BenchReport:
    """Measure every model (each in its own process when `isolate`) and build the side-by-side report;
    `reference` (default: the first model) must be one of `names`."""
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
    in_process = functools.partial(measure, memory=torch.device(settings.device).type == "cuda")
    run = run_isolated if isolate else in_process
    with tqdm(names, desc="bench", unit="model") as bar:
        measurements = [run(name, settings) for name in bar]
    return build_report(measurements, reference, settings, environment(settings, isolate))


def write_bench(report: BenchReport, out_dir: str | Path) -> list[Path]:
    """bench.md, bench.json and bench.png in `out_dir` (created), all or none."""
    return write_files(out_dir, {"bench.md": lambda path: path.write_text(report.to_markdown()),
                                 "bench.json": lambda path: path.write_text(report.to_json() + "\n"),
                                 "bench.png": report.plot})


__all__ = ["BenchReport", "BenchSettings", "Measurement", "ModelBench", "RATIO_METRICS", "SCHEMA", "bench",
           "measure", "write_bench"]
