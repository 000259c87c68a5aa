"""The report's sections and their registry.

A section is a function ``(doc, data, figures folder, options) -> None`` that appends itself to the
:class:`Doc`, or a one-line note when its inputs are absent. :data:`SECTIONS` lists them in page order;
:func:`build` runs each in isolation: a section that fails on odd inputs is logged and noted, never fatal.
This module holds the run-level sections (overview, efficiency, accuracy, training, perplexity, case study); the
ones on the sampled steps are in :mod:`.steps`.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..benchmarks import ALL_BENCHMARKS
from ..utils import read_complete_jsonl
from .data import RUN_NAMES, RunData, eval_accuracies, lightreasoner_costs, sft_costs
from .document import Doc, fmt, fmt_ci, fmt_duration, fmt_int, fmt_p, fmt_ratio, fmt_signed, shorten
from .naming import evaluated_models, sampled_models
from .plots import plot_accuracy, plot_perplexity, plot_training_loss
from .steps import section_kept_steps, section_sampling

logger = logging.getLogger(__name__)

COMPLETION_CHARS = 300  # characters of each completion shown in the case study


@dataclass(frozen=True)
class Options:
    """What the reader chose: ``tokenizer`` (object or spec) for the kept steps, examples per part."""

    tokenizer: Any = None
    cases: int = 5
    kept_step_examples: int = 5


Section = Callable[[Doc, RunData, Path, Options], None]


def section_overview(doc: Doc, data: RunData, figdir: Path, opts: Options) -> None:
    doc.heading(1, f"LightReasoner run report: {data.run_dir.name}")
    facts = [f"run folder: `{data.run_dir}`"]
    meta = data.sample_meta or {}
    facts += sampled_models(data)  # which weights: an embedded model's quantization and source spelled out
    for name in ("alpha", "beta", "max_new_tokens"):
        v = data.sample_setting(name)
        if v is not None:
            facts.append(f"{name}: {v}")
    env = meta.get("versions") or {}
    if env:
        facts.append("environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    doc.bullets(facts)
    stage_s = {k: float(v) for k, v in data.timings.items() if isinstance(v, (int, float))}
    if stage_s:
        rows = [[k, fmt_duration(v), f"{v:.1f}"] for k, v in stage_s.items()]
        total = sum(stage_s.values())
        rows.append(["**total**", fmt_duration(total), f"{total:.1f}"])
        doc.heading(2, "Stage times")
        doc.table(["stage", "wall time", "seconds"], rows)
    missing = data.unfinished_stages()
    if missing:
        doc.note(f"No {', '.join(missing)}: {'that stage has' if len(missing) == 1 else 'those stages have'} not "
                 f"finished, so {'its time is' if len(missing) == 1 else 'their times are'} not known.")


def section_efficiency(doc: Doc, data: RunData, figdir: Path, opts: Options) -> None:
    doc.heading(2, "Efficiency")
    if data.records is None and data.train_summary is None and not data.metrics and data.sft_summary is None:
        doc.note("No samples, training records or SFT summary: efficiency table skipped.")
        return
    lr = lightreasoner_costs(data)
    cmp_lr = data.comparison("tuned")
    lr["gain"] = cmp_lr["average"]["delta"] if cmp_lr else None
    rows = [["LightReasoner", fmt_duration(lr["total_s"]), fmt_duration(lr["sampling_s"]),
             fmt_duration(lr["training_s"]), fmt_int(lr["problems"]), fmt_int(lr["tuned_tokens"]),
             fmt_signed(lr["gain"])]]
    sft = sft_costs(data)
    if sft is not None:
        cmp_sft = data.comparison("sft")
        sft["gain"] = cmp_sft["average"]["delta"] if cmp_sft else None
        rows.append(["SFT", fmt_duration(sft["total_s"]), fmt_duration(sft["sampling_s"]),
                     fmt_duration(sft["training_s"]), fmt_int(sft["problems"]), fmt_int(sft["tuned_tokens"]),
                     fmt_signed(sft["gain"])])
        rows.append(["LightReasoner / SFT", fmt_ratio(lr["total_s"], sft["total_s"]),
                     fmt_ratio(lr["sampling_s"], sft["sampling_s"]), fmt_ratio(lr["training_s"], sft["training_s"]),
                     fmt_ratio(lr["problems"], sft["problems"]), fmt_ratio(lr["tuned_tokens"], sft["tuned_tokens"]),
                     "-"])
    doc.table(["method", "total time", "sampling", "training", "sampled problems", "tuned tokens",
               "accuracy gain (points)"], rows)
    notes = ["total time = sampling + training wall time; tuned tokens = supervised token positions seen in "
             "training (LightReasoner: kept steps; SFT: solution tokens); accuracy gain = mean over benchmarks "
             "of the tuned minus the base accuracy on the same problems."]
    if sft is not None and sft.get("problems_used") is not None:
        notes.append(f"SFT trained on the {sft['problems_used']} of {sft['problems']} sampled problems that had "
                     f"a right sampled solution.")
    if cmp_lr is None:
        notes.append("No paired eval/base and eval/tuned: the gain is not known.")
    doc.para(" ".join(notes))


def section_accuracy(doc: Doc, data: RunData, figdir: Path, opts: Options) -> None:
    doc.heading(2, "Accuracy before and after")
    if not data.evals:
        doc.note("No eval/base, eval/tuned or eval/sft folder with results: accuracy section skipped.")
        return
    accs = {name: eval_accuracies(folder) for name, folder in data.evals.items()}
    benches = [b for b in dict.fromkeys(b for a in accs.values() for b in a)]
    names = list(accs)
    rows = []
    for b in benches:
        rows.append([b] + [f"{100 * accs[n][b][0] / accs[n][b][1]:.1f} ({accs[n][b][1]})" if b in accs[n] and
                           accs[n][b][1] else "-" for n in names])
    means = {n: statistics.fmean(100 * c / m for c, m in accs[n].values() if m) if accs[n] else None for n in names}
    rows.append(["**average**"] + [fmt(means[n], 1) for n in names])
    doc.table(["benchmark"] + [f"{RUN_NAMES[n]} (n)" for n in names], rows)
    doc.para("Accuracy: zero-shot greedy pass@1 in percent, graded like the Qwen2.5-Math toolkit; the average is "
             "the plain mean over benchmarks. The weights each evaluation measured:")
    doc.bullets(evaluated_models(data))
    uneven = [f"{b} ({', '.join(f'{RUN_NAMES[n]} {accs[n][b][1]}' for n in names if b in accs[n])})"
              for b in benches if len({accs[n][b][1] for n in names if b in accs[n]}) > 1]
    if uneven:
        doc.note("Not evaluated on the same problems (an evaluation is unfinished or was cut differently): "
                 + "; ".join(uneven) + ". The accuracies above are not comparable; the paired test below uses "
                 "only the problems both models have.")
    for against, other in (("base", "tuned"), ("base", "sft"), ("sft", "tuned")):
        _paired_test(doc, data, against, other)
    if "base" not in data.evals or len(data.evals) < 2:
        doc.note("Only one evaluated model: no paired test.")
    path = plot_accuracy(accs, benches, means, RUN_NAMES, figdir / "accuracy.png")
    doc.figure(path, "Accuracy per benchmark (grouped bars; the last group is the average).")


def _paired_test(doc: Doc, data: RunData, against: str, other: str) -> None:
    """The paired exact McNemar table of ``other`` vs ``against`` (nothing when either is not evaluated)."""
    cmp = data.comparison(other, against)
    if cmp is None:
        return
    who, ref = RUN_NAMES[other], RUN_NAMES[against]
    doc.heading(3, f"Paired test: {who} vs {ref}")
    prow = [[b, r["n"], f"{r['acc_a']:.1f}", f"{r['acc_b']:.1f}", fmt_signed(r["delta"]), fmt_ci(r),
             r["a_only"], r["b_only"], fmt_p(r["p_value"])] for b, r in cmp["benchmarks"].items()]
    av, al = cmp["average"], cmp["all"]
    if len(cmp["benchmarks"]) > 1:
        prow.append(["**average**", "", f"{av['acc_a']:.1f}", f"{av['acc_b']:.1f}", fmt_signed(av["delta"]),
                     "", "", "", ""])
        prow.append(["**pooled**", al["n"], f"{al['acc_a']:.1f}", f"{al['acc_b']:.1f}", fmt_signed(al["delta"]),
                     fmt_ci(al), al["a_only"], al["b_only"], fmt_p(al["p_value"])])
    doc.table(["benchmark", "paired problems", ref, who, "change", "95% CI", f"only {ref} right",
               f"only {who} right", "McNemar p"], prow)
    doc.para("p: exact two-sided McNemar test on the discordant problems (one model right, the other wrong); "
             "95% CI: paired Wald interval of the change in points. average: the mean over benchmarks (the "
             "paper's headline; no test of its own); pooled: every paired problem as one set.")


def section_training(doc: Doc, data: RunData, figdir: Path, opts: Options) -> None:
    doc.heading(2, "Training")
    s = data.train_summary
    summary, metrics = data.name("train_summary"), data.name("metrics")
    if s is None and not data.metrics:
        doc.note(f"No {summary} or {metrics}: training section skipped.")
        return
    if s is not None:
        doc.bullets([f"updates: {s.get('updates')}, kept steps seen (tuned tokens): {fmt_int(s.get('tuned_tokens'))}"
                     f", epochs over the kept steps: {s.get('epochs')}",
                     f"trajectories: {fmt_int(s.get('trajectories'))}, forward tokens: "
                     f"{fmt_int(s.get('forward_tokens'))}, mode: {s.get('mode')}, trainable parameters: "
                     f"{fmt_int(s.get('trainable_parameters'))}",
                     f"loss: {fmt(s.get('first_loss'), 4)} (first update) -> {fmt(s.get('final_loss'), 4)} (last)",
                     f"training time: {fmt_duration(s.get('train_time_s'))} (wall {fmt_duration(s.get('wall_time_s'))})"
                     ])
    else:
        doc.note(f"{summary} is missing: training has not finished (metrics so far are shown).")
    pts = [(m["update"], m["loss"]) for m in data.metrics if m.get("loss") is not None and "update" in m]
    if pts:
        path = plot_training_loss(pts, figdir / "training_loss.png")
        doc.figure(path, "Training loss per logged update (mean over the updates since the previous log).")
    else:
        doc.note(f"{metrics} holds no loss records: loss curve skipped.")


def section_perplexity(doc: Doc, data: RunData, figdir: Path, opts: Options) -> None:
    doc.heading(2, "Gold-answer perplexity across checkpoints")
    p = data.perplexity
    points = (p or {}).get("checkpoints") or []
    if not points:
        why = (p or {}).get("skipped")
        doc.note(f"Perplexity analysis skipped ({why})." if why else
                 f"No {data.name('perplexity')}: perplexity analysis skipped.")
        return
    base = next((c["perplexity"] for c in points if c.get("name") == "base"), None)
    rows = [[c.get("name"), c.get("step"), fmt(c.get("mean_nll"), 4), fmt(c.get("perplexity"), 3),
             f"{100 * (c['perplexity'] / base - 1):+.1f}%" if base else "-"] for c in points]
    doc.table(["checkpoint", "update", "mean NLL (nats/token)", "perplexity", "vs base"], rows)
    doc.para(f"Perplexity of the reference solutions of {p.get('problems', '?')} held-out problems given the chat "
             f"prompt (pooled over tokens), for the base expert and each training checkpoint.")
    pts = sorted((c["step"], c["perplexity"]) for c in points if c.get("step") is not None)
    path = plot_perplexity(pts, figdir / "perplexity.png")
    doc.figure(path, "Gold-answer perplexity across checkpoints.")


# ---------------------------------------------------------------------------------------------------------------
# Case study


def _question_of(prompt: str) -> str:
    """The last user turn of a ChatML prompt (the prompt itself when it is not ChatML)."""
    start = prompt.rfind("<|im_start|>user\n")
    if start < 0:
        return prompt.strip()
    body = prompt[start + len("<|im_start|>user\n"):]
    end = body.find("<|im_end|>")
    return (body[:end] if end >= 0 else body).strip()


def flipped_problems(base_dir: Path, tuned_dir: Path) -> tuple[list[tuple[str, dict, dict]], list[tuple[str, dict,
                                                                                                          dict]]]:
    """``(improved, regressed)``: ``(benchmark, base record, tuned record)`` of the problems whose verdict differs
    (base wrong and tuned right, and the reverse), in benchmark and file order."""
    improved: list[tuple[str, dict, dict]] = []
    regressed: list[tuple[str, dict, dict]] = []
    for b in ALL_BENCHMARKS:
        fa, fb = base_dir / f"{b}.jsonl", tuned_dir / f"{b}.jsonl"
        if not (fa.is_file() and fb.is_file()):
            continue
        tuned = {str(r["id"]): r for r in read_complete_jsonl(fb)}
        for r in read_complete_jsonl(fa):
            t = tuned.get(str(r["id"]))
            if t is None or bool(r["correct"]) == bool(t["correct"]):
                continue
            (improved if t["correct"] else regressed).append((b, r, t))
    return improved, regressed


def section_case_study(doc: Doc, data: RunData, figdir: Path, opts: Options) -> None:
    doc.heading(2, "Case study")
    if "base" not in data.evals or "tuned" not in data.evals:
        doc.note("Needs both eval/base and eval/tuned: case study skipped.")
        return
    improved, regressed = flipped_problems(data.evals["base"], data.evals["tuned"])
    doc.para(f"Problems the base expert got wrong and the tuned expert right: **{len(improved)}**; "
             f"the reverse: **{len(regressed)}**.")
    k = opts.cases
    for title, cases in (("Base wrong, tuned right", improved), ("Base right, tuned wrong", regressed)):
        if not cases or k <= 0:
            continue
        doc.heading(3, f"{title} (first {min(k, len(cases))} of {len(cases)})")
        for b, r, t in _spread(cases, k):
            doc.para(f"**{b} #{r['id']}**: gold `{r.get('gold')}`; base predicted `{r.get('pred')}`, tuned "
                     f"predicted `{t.get('pred')}`.")
            doc.pre(f"Question: {shorten(_question_of(r.get('prompt', '')), 600)}\n\n"
                    f"--- base expert (first {COMPLETION_CHARS} chars) ---\n"
                    f"{shorten(r.get('completion', ''), COMPLETION_CHARS)}\n\n"
                    f"--- tuned expert (first {COMPLETION_CHARS} chars) ---\n"
                    f"{shorten(t.get('completion', ''), COMPLETION_CHARS)}")


def _spread(cases: list[tuple[str, dict, dict]], k: int) -> list[tuple[str, dict, dict]]:
    """Up to ``k`` cases taken round-robin over benchmarks (in file order within each)."""
    by: dict[str, list] = {}
    for c in cases:
        by.setdefault(c[0], []).append(c)
    out: list = []
    while len(out) < k and any(by.values()):
        for b in list(by):
            if by[b] and len(out) < k:
                out.append(by[b].pop(0))
    return out


# ---------------------------------------------------------------------------------------------------------------
# The registry


SECTIONS: list[tuple[str, Section]] = [
    ("overview", section_overview), ("efficiency", section_efficiency), ("accuracy", section_accuracy),
    ("sampling", section_sampling), ("training", section_training), ("perplexity", section_perplexity),
    ("case study", section_case_study), ("kept steps", section_kept_steps),
]


def build(doc: Doc, data: RunData, figdir: Path, opts: Options) -> None:
    """Every section of :data:`SECTIONS` in order; one that raises becomes a note (and a logged warning)."""
    for name, make in SECTIONS:
        try:
            make(doc, data, figdir, opts)
        except Exception as e:  # noqa: BLE001 - a report of a partial or odd run must still be written
            logger.warning("report section %r failed; noted in the report", name, exc_info=True)
            doc.note(f"The {name} section could not be built ({type(e).__name__}: {e}).")
