"""`midus compare`: the paper's comparison (grow with every method, equal-token CPT, evaluate, bench,
report) for any base, as one resumable command driven by an experiment file.

    from midus.compare import load_experiment, run_comparison
    report = run_comparison(load_experiment("tiny-quick"), "runs/demo-quick")
"""

from .experiment import Experiment, ExperimentError, embedded_names, load_experiment
from .plan import check, plan, plan_markdown
from .report import CompareReport
from .runner import run_comparison

__all__ = ["CompareReport", "Experiment", "ExperimentError", "check", "embedded_names", "load_experiment", "plan",
           "plan_markdown", "run_comparison"]
