"""The memory ablation (README "Memory ablation"): `memory_ablation.yaml`, its rows split over the CPU cores.

    python benchmarks/memory_ablation.py [--out runs/memory-ablation] [--parts 2]   # run every part, merge
    python benchmarks/memory_ablation.py --part 1                                   # one part only (resumable)
    python benchmarks/memory_ablation.py --merge                                    # merge finished parts

Each part is `midus compare` of the experiment with a share of its rows (the reference row in part 0),
one process per core (pinned), one thread each. The parts' reports merge into one report of the
whole experiment: results.md / results.json (paired tests against the default), memory.png and the
other plots, in OUT. The base is evaluated once per part (the same figures).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from midus.compare import CompareReport, load_experiment
from midus.compare.plots import write_plots
from midus.compare.report import to_markdown

EXPERIMENT = Path(__file__).with_name("memory_ablation.yaml")


def shares(names: list[str], reference: str, parts: int) -> list[list[str]]:
    """The reference row in part 0, the others dealt out so that the parts have equal numbers of rows."""
    out = [[reference]] + [[] for _ in range(parts - 1)]
    for i, name in enumerate(n for n in names if n != reference):
        out[(i + 1) % parts].append(name)
    return out


def run_part(path: Path, experiment, share: list[str], out: Path, core: int) -> subprocess.Popen:
    methods = [m.model_dump() for m in experiment.methods if m.name in share]
    command = [sys.executable, "-m", "midus", "compare", str(path), "--out", str(out),
               "--set", f"methods={json.dumps(methods)}", "--set", f"reference={share[0]}"]
    cores = sorted(os.sched_getaffinity(0))
    pin = cores[core % len(cores)]
    print(f"part {out.name}: {', '.join(share)} on core {pin}", flush=True)
    return subprocess.Popen(command, preexec_fn=lambda: os.sched_setaffinity(0, {pin}))


def merge(experiment, out: Path, parts: int) -> CompareReport:
    reports = [CompareReport.model_validate_json((out / f"part-{k}" / "results.json").read_text()) for k in range(parts)]
    merged = reports[0].model_copy(deep=True)
    merged.runs += [run for report in reports[1:] for run in report.runs if run.method != "base"]
    merged.stages += [stage for report in reports[1:] for stage in report.stages]
    merged.experiment = experiment.model_dump(mode="json")
    merged.reference, merged.command = experiment.reference, " ".join(["python", *sys.argv])
    merged.total_seconds = max(report.total_seconds for report in reports)  # the parts run side by side
    merged.summarise()
    (out / "results.json").write_text(merged.to_json() + "\n")
    (out / "results.md").write_text(to_markdown(merged))
    write_plots(merged, out)
    for k, report in enumerate(reports):
        print(f"part {k}: {report.total_seconds / 60:.1f} min, stages {sum(s.seconds for s in report.stages) / 60:.1f} min")
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", type=Path, default=EXPERIMENT, help="default: memory_ablation.yaml")
    parser.add_argument("--out", type=Path, default=Path("runs/memory-ablation"))
    parser.add_argument("--parts", type=int, default=2, help="processes, one per core (default 2)")
    parser.add_argument("--part", type=int, help="run this part only (0-based), without merging")
    parser.add_argument("--merge", action="store_true", help="only merge the finished parts")
    args = parser.parse_args()
    experiment = load_experiment(str(args.experiment))
    split = shares(experiment.method_names, experiment.reference, args.parts)
    if not args.merge:
        chosen = range(args.parts) if args.part is None else [args.part]
        processes = [run_part(args.experiment, experiment, split[k], args.out / f"part-{k}", k) for k in chosen]
        if any(process.wait() for process in processes):
            sys.exit("a part failed: see its results.md; rerun to resume")
        if args.part is not None:
            return
    merged = merge(experiment, args.out, args.parts)
    print(f"{args.out / 'results.md'}: {len(merged.rows) - 1} rows")


if __name__ == "__main__":
    main()
