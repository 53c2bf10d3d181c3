"""`midus bench MODEL...`: parameters, peak memory, training step time, prefill and decode latency of
folders, recipes or hub ids, side by side, with ratios to a reference measured in the same run, and the
added cost per block of every model whose base is benched too."""

from .measure import BenchSettings, Measurement, measure_interleaved
from .report import RATIO_METRICS, SCHEMA, TIMING_METRICS, AddedCost, BenchReport, ModelBench
from .run import bench, write_bench

__all__ = ["AddedCost", "BenchReport", "BenchSettings", "Measurement", "ModelBench", "RATIO_METRICS", "SCHEMA",
           "TIMING_METRICS", "bench", "measure_interleaved", "write_bench"]
