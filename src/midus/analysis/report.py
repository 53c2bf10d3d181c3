"""The report folder of `midus analyze`:

    analysis.json           schema midus.analyze/1: model, stack, settings, data, baseline loss, notes, and
                            `reports`: the file of each analysis below that ran
    head_importance.json    schema midus.analyze.head_importance/1   + head_importance.png (blocks x heads)
    fixed_retrieval.json    schema midus.analyze.fixed_retrieval/1   + fixed_retrieval.png   (memory models)
    usage.json              schema midus.analyze.usage/1             + usage.png             (memory models)
    summary.md              what the numbers say
"""

import json
import math
from functools import partial
from pathlib import Path

from ..checkpoint import check_out_dir
from ..report import markdown_table, write_report_files
from .head_importance import ranking
from .probes import NEGLIGIBLE_LOSS
from .plots import plot_fixed_retrieval, plot_head_importance, plot_usage
from .run import Analysis

SECTIONS = ("head_importance", "fixed_retrieval", "usage")
PLOTS = {"head_importance": plot_head_importance, "fixed_retrieval": plot_fixed_retrieval, "usage": plot_usage}
TOP = 5  # heads listed as most / least important


def write_report(analysis: Analysis, out_dir: str | Path) -> list[Path]:
    """Write every file of the report into the new folder `out_dir`, all or none; return their paths."""
    files = {}
    for section in SECTIONS:
        if (result := getattr(analysis, section)) is not None:
            files[f"{section}.json"] = result.to_json()
            files[f"{section}.png"] = partial(PLOTS[section], result)
    meta = analysis.model_dump(mode="json", by_alias=True, exclude=set(SECTIONS))
    meta["reports"] = {s: f"{s}.json" for s in SECTIONS if getattr(analysis, s) is not None}
    files["analysis.json"] = json.dumps(meta, indent=2)
    files["summary.md"] = summary_markdown(analysis)
    return write_report_files(check_out_dir(out_dir), files)


def fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:+.{digits}f}" if abs(value) < 1e4 else f"{value:+.3g}"


def share(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def summary_markdown(analysis: Analysis) -> str:
    s = analysis.settings
    lines = [
        f"# Analysis of `{analysis.model}`",
        "",
        f"- model: `{analysis.model_type}`, {len(analysis.head_importance.blocks)} blocks `{analysis.stack}` "
        "(D decoder, M memory, P pkm; * added by growth)",
        f"- data: {len(analysis.files)} file(s), {analysis.windows} windows of {s.seq_len} tokens, "
        f"{analysis.tokens:,} scored tokens",
        f"- held-out loss {analysis.baseline_loss:.4f} (perplexity {math.exp(min(analysis.baseline_loss, 700)):.2f})",
        "",
    ]
    lines += [f"> {note}" for note in analysis.notes] + ([""] if analysis.notes else [])
    lines += in_short(analysis)
    lines += importance_section(analysis)
    if analysis.fixed_retrieval is not None:
        lines += fixed_retrieval_section(analysis)
    if analysis.usage is not None:
        lines += usage_section(analysis)
    return "\n".join(lines) + "\n"


def in_short(analysis: Analysis) -> list[str]:
    """The verdicts of the sections below, in a few lines."""
    importance, lines = analysis.head_importance, []
    measure = "removal" if any(b.removal is not None for b in importance.blocks) else "gradient"
    block, head, value = ranking(importance, measure)[0]
    lines.append(f"- Most important head: block {block.label}, head {head} ({block.kind}), "
                 f"{'loss +' + format(value, '.4f') + ' when removed' if measure == 'removal' else f'gradient {value:.3g}'}.")
    if importance.all_memory_removal is not None:
        lines.append(f"- Memory: {memory_verdict(importance.all_memory_removal)} "
                     f"(every memory head removed: {fmt(importance.all_memory_removal)} loss).")
    if analysis.fixed_retrieval is not None and analysis.fixed_retrieval.blocks:
        lines.append(f"- Projections P_h: {specificity_verdict(analysis.fixed_retrieval)}.")
    if analysis.usage is not None:
        for block in analysis.usage.blocks:
            lines.append(f"- Usage, {usage_verdict(block)}.")
    if analysis.memory_blocks == 0:
        lines.append("- No memory blocks: attention-head importance only.")
    return ["## In short", "", *lines, ""]


def memory_verdict(rise: float) -> str:
    if rise > NEGLIGIBLE_LOSS:
        return "the memory output lowers the loss"
    if rise < -NEGLIGIBLE_LOSS:
        return "the memory output raises the loss: the model does better without it"
    return "the memory output does not change the loss, whatever slots it retrieves (projections at or near zero: untrained?)"


def specificity_verdict(result) -> str:
    specific = [b.head_specificity for b in result.blocks if b.head_specificity is not None]
    if not specific:
        return (f"head-specificity undefined: removing a block's memory output does not raise the loss (by more than "
                f"{NEGLIGIBLE_LOSS:g}), as with projections at or near zero (an untrained MIDUS model)")
    mean = sum(specific) / len(specific)
    kind = ("head-specific: realising a head's latent through another head's projection loses most of the memory's "
            "effect" if mean >= 0.75 else "partly head-specific" if mean >= 0.25 else
            "interchangeable across heads: the heads' P_h could be shared")
    return f"mean head-specificity {mean:.2f} over {len(specific)} block(s): the value realisation is {kind}"


def importance_section(analysis: Analysis) -> list[str]:
    result = analysis.head_importance
    measured = any(block.removal is not None for block in result.blocks)
    measure = "removal" if measured else "gradient"
    lines = ["## Head importance", "",
             "Loss rise when one head's contribution is removed (memory head: z_h = 0; attention head: its output "
             "before o_proj = 0), and the gradient estimate E|dL/dmask_h|. Figure: `head_importance.png`.", ""]
    ranked = ranking(result, measure)
    header = ["block", "head", "kind", "removal Δloss", "gradient"]

    def rows(selection):
        return [[block.label, str(head), block.kind, fmt(block.removal[head] if block.removal else None),
                 f"{block.gradient[head]:.3g}"] for block, head, _ in selection]

    lines += [f"Most important heads (by {measure}):", ""] + markdown_table(header, rows(ranked[:TOP])) + [""]
    lines += [f"Least important heads (by {measure}):", ""] + markdown_table(header, rows(ranked[::-1][:TOP])) + [""]

    groups = {"memory heads": lambda b: b.kind == "memory",
              "attention heads of added blocks": lambda b: b.kind != "memory" and b.new,
              "attention heads of original blocks": lambda b: b.kind != "memory" and not b.new}
    group_rows = []
    for name, member in groups.items():
        chosen = [b for b in result.blocks if member(b)]
        if not chosen:
            continue
        values = [v for b in chosen for v in (getattr(b, measure) or [])]
        whole = [b.block_removal for b in chosen if b.block_removal is not None]
        group_rows.append([name, str(len(values)), fmt(sum(values) / len(values)), fmt(max(values)),
                           fmt(sum(whole) / len(whole)) if whole else "–"])
    lines += [f"By kind of head ({measure}):", ""]
    lines += markdown_table(["heads", "count", "mean", "max", "mean whole-block removal"], group_rows) + [""]

    if measured:
        removals = [v for b in result.blocks for v in b.removal]
        negative = sum(v < -NEGLIGIBLE_LOSS for v in removals)
        negligible = sum(abs(v) <= NEGLIGIBLE_LOSS for v in removals)
        lines.append(f"- {negligible} of {len(removals)} heads change the loss by less than {NEGLIGIBLE_LOSS:g} when removed; "
                     f"removing {negative} lowers it.")
        if result.all_memory_removal is not None:
            lines.append(f"- Removing every memory head at once: {fmt(result.all_memory_removal)} loss: "
                         f"{memory_verdict(result.all_memory_removal)}.")
        magnitude, signed = (result.rank_correlation[k] for k in ("gradient_vs_abs_removal", "taylor_vs_removal"))
        if magnitude["all"] is not None:
            rho = magnitude["all"]
            agreement = "ranks heads like removal" if rho >= 0.7 else "roughly follows removal" if rho >= 0.4 \
                else "ranks heads poorly: trust the removal measure"
            per_kind = "".join(f"; {k} {v:.2f}" for k, v in magnitude.items() if k != "all" and v is not None)
            lines.append(f"- The gradient estimate {agreement} (Spearman ρ with |removal| {rho:.2f}{per_kind}).")
        if signed["all"] is not None:
            lines.append(f"- The signed first-order estimate -dL/dmask_h against the signed removal: ρ = {signed['all']:.2f} "
                         "(removal is a large step: where they differ, the loss is far from linear in the mask).")
    return lines + [""]


def fixed_retrieval_section(analysis: Analysis) -> list[str]:
    result = analysis.fixed_retrieval
    lines = ["## Fixed retrieval", "",
             "Every memory block's retrieval recorded and replayed; only the projection that realises each head's "
             "latent z_h changes, one block at a time. Head-specificity = (permuted Δ) / (no-memory Δ): near 1, "
             "another head's P_h loses the memory's effect; near 0, the projections are interchangeable. "
             "Figure: `fixed_retrieval.png`.", ""]
    lines += [f"> {note}" for note in result.skipped] + ([""] if result.skipped else [])
    if not result.blocks:
        return lines + ["No HIVE memory block to analyse.", ""]
    rows = []
    for block in result.blocks:
        delta = {v.kind: v.delta for v in block.variants if v.kind in ("identity", "shared", "zero")}
        rows.append([block.label, fmt(delta["zero"]), fmt(delta["identity"], 6), fmt(block.permuted_delta),
                     fmt(delta["shared"]), fmt(block.head_specificity, 2), fmt(block.shared_specificity, 2)])
    lines += markdown_table(["block", "no memory Δ", "identity Δ", "permuted Δ (mean)", "mean-P Δ", "head-specificity",
                            "mean-P / no memory"], rows) + [""]
    identity = max(abs(v.delta) for b in result.blocks for v in b.variants if v.kind == "identity")
    replay = ("replaying the recorded retrieval reproduces the model" if identity < 1e-6 else
              "the replay does not reproduce the model exactly: low precision or a non-deterministic model")
    lines.append(f"- Identity permutation: largest |Δ| {identity:.2g}: {replay}.")
    lines.append(f"- Projections P_h: {specificity_verdict(result)}.")
    shared = [b.shared_specificity for b in result.blocks if b.shared_specificity is not None]
    if shared:
        lines.append(f"- One shared projection (the mean of the P_h) loses {sum(shared) / len(shared):.2f} "
                     "of the memory's effect on average.")
    if result.value_retraining is not None:
        lines += ["", "### Retraining the value path (retrieval frozen)", "",
                  f"A fresh bank and projections, and an FFN of equal parameters on the same inputs, fitted by MSE to "
                  f"each block's contribution on {result.value_retraining.fit_windows} windows "
                  f"({result.value_retraining.steps} Adam steps, lr {result.value_retraining.lr:g}), scored on "
                  f"{result.value_retraining.heldout_windows} held-out windows. Recovered = share of the memory's "
                  "effect on the loss that the fitted map restores.", ""]
        rows = [[block.label, fit.name, f"{fit.parameters:,}", f"{fit.train_relative_mse:.3f}",
                 f"{fit.heldout_relative_mse:.3f}", fmt(fit.delta), share(fit.recovered)]
                for block in result.value_retraining.blocks for fit in block.fits]
        lines += markdown_table(["block", "map", "parameters", "relative MSE (fit)", "relative MSE (held-out)", "Δloss",
                                "recovered"], rows) + [""]
        wins = sum(fits["values"].recovered > fits["ffn"].recovered for fits in
                   ({f.name: f for f in b.fits} for b in result.value_retraining.blocks)
                   if fits["values"].recovered is not None and fits["ffn"].recovered is not None)
        lines.append(f"- The retrained value path recovers more than the equal-size FFN in {wins} of "
                     f"{len(result.value_retraining.blocks)} blocks.")
    return lines + [""]


def usage_section(analysis: Analysis) -> list[str]:
    result = analysis.usage
    lines = ["## Memory usage", "",
             "Per block, averaged over heads: share of slots ever retrieved, entropy of slot usage / log(slots), "
             "Jaccard overlap of the heads' used-slot sets, mean top weight and weight entropy / log(k). "
             "Per-head values are in `usage.json`; histograms in `usage.png`.", ""]
    rows = []
    for block in result.blocks:
        heads = block.heads
        mean = lambda name: sum(getattr(h, name) for h in heads) / len(heads)  # noqa: E731
        rows.append([block.label, f"{block.slots:,}", str(block.topk), share(mean("share_used")),
                     share(min(1.0, block.tokens * block.topk / block.slots)), share(block.share_used_any_head),
                     f"{mean('normalized_entropy'):.3f}", "–" if block.mean_jaccard is None else f"{block.mean_jaccard:.3f}",
                     f"{mean('mean_max_weight'):.3f}", f"{mean('normalized_weight_entropy'):.3f}"])
    lines += markdown_table(["block", "slots/head", "k", "slots used", "at most (N·k/S)", "used by any head", "usage entropy",
                            "mean Jaccard", "mean max weight", "weight entropy"], rows) + [""]
    lines += [f"- {usage_verdict(block)}." for block in result.blocks]
    return lines + [""]


def usage_verdict(block) -> str:
    """One block's usage in words: breadth (of the slots its tokens could reach), evenness, peakedness, overlap."""
    used = sum(h.share_used for h in block.heads) / len(block.heads)
    reachable = min(1.0, block.tokens * block.topk / block.slots)
    entropy = sum(h.normalized_entropy for h in block.heads) / len(block.heads)
    weight = sum(h.mean_max_weight for h in block.heads) / len(block.heads)
    if used >= 0.5 * reachable:
        breadth = f"retrieves broadly ({share(used)} of slots per head; {share(reachable)} reachable with {block.tokens:,} tokens)"
    elif used >= 0.1 * reachable:
        breadth = f"retrieves part of its memory ({share(used)} of slots per head; {share(reachable)} reachable)"
    else:
        breadth = f"retrieves few slots ({share(used)} per head; {share(reachable)} reachable): most of the memory is idle"
    spread = "evenly" if entropy >= 0.9 else "unevenly" if entropy >= 0.6 else "very unevenly (a few slots dominate)"
    peaked = ("one slot dominates each lookup" if weight >= 0.8 else
              "weights near uniform over the top-k" if weight <= 2 / block.topk else "weights spread over a few slots")
    overlap = "" if block.mean_jaccard is None else f"; heads overlap with Jaccard {block.mean_jaccard:.2f}"
    return f"block {block.label} {breadth}, {spread}; {peaked} (mean max weight {weight:.2f}){overlap}"
