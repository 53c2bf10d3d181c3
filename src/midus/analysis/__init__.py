"""`midus analyze`: what the memory of a grown model does.

- head importance (head_importance.py): loss rise when a head is removed, and a gradient estimate,
  for memory heads (z_h = 0) and attention heads (output before o_proj = 0) alike;
- fixed retrieval (fixed_retrieval.py, value_retraining.py): with each head's retrieval replayed,
  realise the values through other heads' projections or a shared one; optionally retrain the value
  path from scratch and compare it with an FFN of equal parameters;
- memory usage (usage.py): slots used, usage entropy, overlap between heads, weight concentration.

`analyze` runs what applies to a model; `write_report` writes JSON, PNG and a Markdown summary.
"""

from .fixed_retrieval import FixedRetrieval, fixed_retrieval_analysis
from .head_importance import HeadImportance, head_importance
from .probes import blocks, captured_retrieval, head_masks, mean_loss, replayed_retrieval
from .report import summary_markdown, write_report
from .run import AnalyzeSettings, Analysis, analyze, analyze_to_folder
from .usage import MemoryUsage, UsageCounter, memory_usage
from .value_retraining import ValueRetraining, retrain_values

__all__ = [
    "Analysis", "AnalyzeSettings", "FixedRetrieval", "HeadImportance", "MemoryUsage", "UsageCounter", "ValueRetraining",
    "analyze", "analyze_to_folder", "blocks", "captured_retrieval", "fixed_retrieval_analysis",
    "head_importance", "head_masks", "mean_loss", "memory_usage", "replayed_retrieval", "retrain_values", "summary_markdown",
    "write_report",
]
