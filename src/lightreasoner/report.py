"""``lightreasoner report``: one readable page (``report.md`` and ``report.html``) for a run folder.

Reads what ``lightreasoner run`` writes into ``RUN_DIR`` and builds, section by section:

- the paper's efficiency table: total time (sampling + training), sampled problems, tuned tokens and average
  accuracy gain, for LightReasoner and (when present) the SFT baseline;
- accuracy per benchmark before and after, with the paired exact McNemar test (:func:`evaluate.compare_runs`);
- the sampling statistics: KL histogram with ``beta`` marked, kept-step rate by position, plausible-set sizes, and
  the authors' preliminary analysis (KL and entropies split by top-1 agreement);
- the training loss curve; the gold-answer perplexity across checkpoints (``perplexity.json``, computed by the
  pipeline with :func:`gold_perplexity`);
- a case study (problems the base expert got wrong and the tuned one right, and the reverse) and a few kept steps
  as ``lightreasoner inspect`` prints them.

Figures are PNG files in ``RUN_DIR/figures/`` (matplotlib's object API on the Agg canvas: no pyplot state, no
global backend switch); ``report.html`` holds the same content with the figures inline (base64). A section whose
inputs are absent is replaced by a one-line note, so a partial run still gets a report.

Python use::

    path = write_report("runs/embedded")                     # -> runs/embedded/report.md
    nll, ppl = gold_perplexity(model, tokenizer, problems, "Please reason step by step.")
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from .config import flag, load_yaml, option
from .layout import RunLayout, read_meta
from .utils import InputError, atomic_write, read_complete_jsonl, read_json, writes_output

logger = logging.getLogger(__name__)

RUN_NAMES = {"base": "base expert", "tuned": "LightReasoner", "sft": "SFT"}
COLORS = {"base": "#8c8c8c", "tuned": "#1f77b4", "sft": "#ff7f0e"}
# The authors' preliminary analysis (pre_analysis_stats.py): thresholds of its "claims".
CONFIDENT_EXPERT_H = 1.0
UNCERTAIN_AMATEUR_H = 3.0
HIGH_KL = 1.0
COMPLETION_CHARS = 300


@dataclass(frozen=True)
class ReportConfig:
    """Write report.md and report.html (figures inline) for a run folder written by `lightreasoner run`.

    example: lightreasoner report runs/embedded
    """

    run_dir: str = option(help="run folder written by `lightreasoner run`", positional=True, result=False)
    tokenizer: str | None = option(None, "tokenizer to show kept steps as text (default: the samples manifest's "
                                         "expert; ids are shown when it cannot be loaded)", result=False)
    cases: int = option(5, "examples per direction in the case study (base wrong -> tuned right, and the reverse)")
    kept_step_examples: int = option(5, "kept steps shown as `lightreasoner inspect` prints them")

    def validate(self) -> list[str]:
        return [f"{flag(n)} must be >= 0, got {getattr(self, n)}"
                for n in ("cases", "kept_step_examples") if getattr(self, n) < 0]


# ---------------------------------------------------------------------------------------------------------------
# Gold-answer perplexity (called by the pipeline once per checkpoint)


@torch.inference_mode()
def gold_perplexity(model: Any, tokenizer: Any, problems: Sequence[Any], system_prompt: str, *,
                    batch_size: int = 8, target: str = "solution", progress: bool = False) -> tuple[float, float]:
    """Mean per-token NLL of each problem's gold text given its chat prompt, and ``exp`` of it (perplexity).

    ``problems``: objects with ``question`` and ``target`` (``"solution"``: the full reference solution, or
    ``"answer"``: the final answer only, as the authors' ``PPL_analysis.py`` scores it); problems without that text
    are skipped. The prompt is :func:`sample.build_prompt_ids` (system + user turn + generation prompt) and the gold
    tokens follow it (encoded on their own, no EOS). The mean is pooled over all gold tokens (total NLL / tokens),
    as the authors compute it. Rows are left padded, sorted by length and scored ``batch_size`` at a time; only
    the last ``max gold length + 1`` positions' logits are formed (``[B, m + 1, V]``, scored in float32).
    """
    from .sample import build_prompt_ids

    if target not in ("solution", "answer"):
        raise ValueError(f"target must be 'solution' or 'answer', got {target!r}")
    items: list[tuple[list[int], list[int]]] = []
    for p in problems:
        text = getattr(p, target, None)
        if not text:
            continue
        gold = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if gold:
            items.append((build_prompt_ids(tokenizer, p.question, system_prompt), gold))
    if not items:
        raise InputError(f"gold_perplexity: none of the {len(problems)} problems has a {target} text")
    if len(items) < len(problems):
        logger.info("gold_perplexity: %d of %d problems have no %s text and are skipped", len(problems) - len(items),
                    len(problems), target)
    order = sorted(range(len(items)), key=lambda i: -(len(items[i][0]) + len(items[i][1])))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), desc="gold perplexity", unit="problem", disable=not progress)
    try:
        for start in range(0, len(order), batch_size):
            rows = [items[i] for i in order[start:start + batch_size]]
            seqs = [prompt + gold for prompt, gold in rows]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, width - len(s):] = torch.tensor(s)
                mask[r, width - len(s):] = 1
            ids, mask = ids.to(device), mask.to(device)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            m = max(len(g) for _, g in rows)
            # Kept column j is sequence column width - (m + 1) + j; gold token k of a row with n gold tokens sits at
            # column width - n + k and is predicted by the column before it, i.e. kept index m - n + k.
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=m + 1).logits
            for r, (_, gold) in enumerate(rows):
                n = len(gold)
                lg = logits[r, m - n:m].float()
                total_nll += float(F.cross_entropy(lg, torch.tensor(gold, device=lg.device), reduction="sum"))
                total_tokens += n
            bar.update(len(rows))
            bar.set_postfix(ppl=f"{math.exp(total_nll / total_tokens):.3f}")
    finally:
        bar.close()
        model.train(was_training)
    mean_nll = total_nll / total_tokens
    return mean_nll, math.exp(mean_nll)


# ---------------------------------------------------------------------------------------------------------------
# A tiny document model rendered to Markdown and HTML


def _inline_html(text: str) -> str:
    """Escape, then render the Markdown we use inline: `code` and **bold**."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


@dataclass
class Doc:
    """Blocks appended in order; :meth:`markdown` and :meth:`html` render the same content."""

    md: list[str] = field(default_factory=list)
    html_parts: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        self.md.append("#" * level + " " + text)
        self.html_parts.append(f"<h{level}>{_inline_html(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md.append(text)
        self.html_parts.append(f"<p>{_inline_html(text)}</p>")

    def note(self, text: str) -> None:
        self.md.append(f"_{text}_")
        self.html_parts.append(f'<p class="note">{_inline_html(text)}</p>')

    def bullets(self, items: Sequence[str]) -> None:
        self.md.append("\n".join(f"- {i}" for i in items))
        self.html_parts.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in items) + "</ul>")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool] | None = None) -> None:
        right = list(right) if right is not None else [i > 0 for i in range(len(header))]
        lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
                 "| " + " | ".join("---:" if r else "---" for r in right) + " |"]
        lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
        self.md.append("\n".join(lines))
        align = [' style="text-align:right"' if r else "" for r in right]
        head = "".join(f"<th{a}>{_inline_html(str(h))}</th>" for h, a in zip(header, align))
        body = "".join("<tr>" + "".join(f"<td{a}>{_inline_html(str(c))}</td>" for c, a in zip(row, align)) + "</tr>"
                       for row in rows)
        self.html_parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def pre(self, text: str) -> None:
        fence = _fence(text)
        self.md.append(f"{fence}text\n{text}\n{fence}")
        self.html_parts.append(f"<pre>{html.escape(text)}</pre>")

    def figure(self, path: Path, caption: str, run_dir: Path) -> None:
        rel = path.relative_to(run_dir).as_posix()
        self.md.append(f"![{caption}]({rel})\n\n{caption}")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        self.html_parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                               f"<figcaption>{_inline_html(caption)}</figcaption></figure>")
        self.figures.append(path)

    def markdown(self) -> str:
        return "\n\n".join(self.md) + "\n"

    def html(self, title: str) -> str:
        style = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;"
                 "line-height:1.45;color:#222}table{border-collapse:collapse;margin:1em 0}"
                 "th,td{border:1px solid #ccc;padding:.25em .6em}th{background:#f3f3f3}"
                 "pre{background:#f6f6f6;padding:.6em;overflow-x:auto;white-space:pre-wrap}"
                 "img{max-width:100%}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}"
                 ".note{color:#777;font-style:italic}code{background:#f3f3f3;padding:0 .2em}")
        return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
                f"<style>{style}</style></head><body>\n" + "\n".join(self.html_parts) + "\n</body></html>\n")


# ---------------------------------------------------------------------------------------------------------------
# Reading the run folder


def _read_json_or_none(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except (OSError, ValueError) as e:
        logger.warning("%s: not readable JSON (%s); ignored", path, e)
        return None


def _has_jsonl(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.jsonl"))


@dataclass
class RunData:
    """Everything the report reads, each ``None``/empty when absent."""

    run_dir: Path
    run_config: dict | None
    timings: dict
    records: list[dict] | None
    manifest: dict | None
    train_summary: dict | None
    metrics: list[dict]
    evals: dict[str, Path]  # name -> eval folder holding <benchmark>.jsonl files
    sft_summary: dict | None
    perplexity: dict | None

    @classmethod
    def load(cls, run_dir: str | Path) -> "RunData":
        L = RunLayout(run_dir)
        records = read_complete_jsonl(L.samples) if L.samples.is_file() else None
        if records is not None and records and not isinstance(records[0].get("kl"), list):
            logger.warning("%s does not hold `lightreasoner sample` records (no per-step kl); ignored", L.samples)
            records = None
        metrics = read_complete_jsonl(L.train / "metrics.jsonl") if (L.train / "metrics.jsonl").is_file() else []
        run_config = {"config": load_yaml(L.config)} if L.config.is_file() else None
        timings = {}
        for name, folder in (("sample", L.sample), ("train", L.train), ("merge", L.merge),
                             *((f"eval_{n}", L.eval(n)) for n in RUN_NAMES), ("sft", L.sft),
                             ("perplexity", L.perplexity)):
            meta = read_meta(folder)
            if meta is not None:
                timings[name] = meta.get("seconds")
        return cls(run_dir=L.root, run_config=run_config, timings=timings, records=records,
                   manifest=read_meta(L.sample), train_summary=_read_json_or_none(L.train / "summary.json"),
                   metrics=metrics, evals={n: L.eval(n) for n in RUN_NAMES if _has_jsonl(L.eval(n))},
                   sft_summary=_read_json_or_none(L.sft / "summary.json"),
                   perplexity=_read_json_or_none(L.perplexity / "perplexity.json"))

    def sample_setting(self, name: str, default: Any = None) -> Any:
        """A sampling setting (alpha, beta, ...) from the samples manifest, else the run config."""
        for src in (self.manifest, self.run_config):
            value = ((src or {}).get("config") or {}).get(name)
            if value is not None:
                return value
        return default

    def comparison(self, other: str, against: str = "base") -> dict | None:
        """:func:`evaluate.compare_runs` of ``against`` (A) vs ``other`` (B), or ``None`` when either is absent."""
        from .evaluate import compare_runs

        if against not in self.evals or other not in self.evals:
            return None
        try:
            return compare_runs(self.evals[against], self.evals[other])
        except InputError as e:
            logger.warning("cannot pair eval/%s with eval/%s: %s", against, other, e)
            return None


# ---------------------------------------------------------------------------------------------------------------
# Formatting helpers


def fmt_duration(seconds: float | None) -> str:
    """``42.0 s``, ``12.5 min`` or ``3.20 h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 100:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _fmt_int(v: Any) -> str:
    return "-" if v is None else f"{int(v):,}"


def _fmt_signed(v: float | None) -> str:
    return "-" if v is None else f"{v:+.1f}"


def _fmt_ci(row: dict) -> str:
    ci = row.get("delta_ci95")
    return "-" if not ci else f"{ci[0]:+.1f} .. {ci[1]:+.1f}"


def _fmt_p(p: float | None) -> str:
    return "-" if p is None else f"{p:.3g}"


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def _new_figure(width: float = 6.4, height: float = 3.6) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, buf.getvalue())
    return path


# ---------------------------------------------------------------------------------------------------------------
# Sections: each takes (doc, data, figures folder, options) and writes itself or a one-line note


def section_overview(doc: Doc, data: RunData, figdir: Path, opts: dict) -> None:
    doc.heading(1, f"LightReasoner run report: {data.run_dir.name}")
    facts = [f"run folder: `{data.run_dir}`"]
    cfg = (data.run_config or {}).get("config") or {}
    manifest = data.manifest or {}
    expert = cfg.get("expert") or (manifest.get("expert") or {}).get("spec")
    amateur = cfg.get("amateur") or (manifest.get("amateur") or {}).get("spec")
    if expert:
        facts.append(f"expert: `{expert}`")
    if amateur:
        facts.append(f"amateur: `{amateur}`")
    for name in ("alpha", "beta", "max_new_tokens"):
        v = data.sample_setting(name)
        if v is not None:
            facts.append(f"{name}: {v}")
    env = manifest.get("versions") or manifest.get("environment") or {}
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
    else:
        doc.note("No stage meta.json: stage times are not known.")


def lightreasoner_costs(data: RunData) -> dict[str, Any]:
    """Sampling and training seconds, sampled problems and tuned tokens of the LightReasoner run."""
    t = data.timings
    manifest = data.manifest or {}
    summary = data.train_summary or {}
    sampling = t.get("sample")
    if sampling is None:
        sampling = (manifest.get("timings") or {}).get("wall_s")
    training = t.get("train")
    if training is None:
        training = summary.get("wall_time_s", summary.get("train_time_s"))
    problems = (manifest.get("counts") or {}).get("problems")
    if problems is None and data.records is not None:
        problems = len(data.records)
    tokens = summary.get("tuned_tokens", summary.get("kept_steps_seen"))
    if tokens is None and data.metrics:
        tokens = data.metrics[-1].get("kept_steps_seen")
    total = None if sampling is None or training is None else float(sampling) + float(training)
    return {"sampling_s": sampling, "training_s": training, "total_s": total, "problems": problems,
            "tuned_tokens": tokens}


def sft_costs(data: RunData) -> dict[str, Any] | None:
    s = data.sft_summary
    if s is None:
        return None
    times = s.get("time_s") or {}
    sampling, training = times.get("sampling"), times.get("training")
    total = None if sampling is None or training is None else float(sampling) + float(training)
    return {"sampling_s": sampling, "training_s": training, "total_s": total, "problems": s.get("problems_sampled"),
            "problems_used": s.get("problems_used"), "tuned_tokens": s.get("tuned_tokens")}


def section_efficiency(doc: Doc, data: RunData, figdir: Path, opts: dict) -> None:
    doc.heading(2, "Efficiency")
    if data.records is None and data.train_summary is None and not data.metrics and data.sft_summary is None:
        doc.note("No samples, training records or SFT summary: efficiency table skipped.")
        return
    lr = lightreasoner_costs(data)
    cmp_lr = data.comparison("tuned")
    lr["gain"] = cmp_lr["average"]["delta"] if cmp_lr else None
    rows = [["LightReasoner", fmt_duration(lr["total_s"]), fmt_duration(lr["sampling_s"]),
             fmt_duration(lr["training_s"]), _fmt_int(lr["problems"]), _fmt_int(lr["tuned_tokens"]),
             _fmt_signed(lr["gain"])]]
    sft = sft_costs(data)
    if sft is not None:
        cmp_sft = data.comparison("sft")
        sft["gain"] = cmp_sft["average"]["delta"] if cmp_sft else None
        rows.append(["SFT", fmt_duration(sft["total_s"]), fmt_duration(sft["sampling_s"]),
                     fmt_duration(sft["training_s"]), _fmt_int(sft["problems"]), _fmt_int(sft["tuned_tokens"]),
                     _fmt_signed(sft["gain"])])
        rows.append(["LightReasoner / SFT", _ratio(lr["total_s"], sft["total_s"]),
                     _ratio(lr["sampling_s"], sft["sampling_s"]), _ratio(lr["training_s"], sft["training_s"]),
                     _ratio(lr["problems"], sft["problems"]), _ratio(lr["tuned_tokens"], sft["tuned_tokens"]), "-"])
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


def eval_accuracies(folder: Path) -> dict[str, tuple[int, int]]:
    """``{benchmark: (correct, n)}`` of an eval folder's JSONL files."""
    from .evaluate import load_run

    return {b: (sum(v.values()), len(v)) for b, v in load_run(folder).items()}


def section_accuracy(doc: Doc, data: RunData, figdir: Path, opts: dict) -> None:
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
    rows.append(["**average**"] + [_fmt(means[n], 1) for n in names])
    doc.table(["benchmark"] + [f"{RUN_NAMES[n]} (n)" for n in names], rows)
    doc.para("Accuracy: zero-shot greedy pass@1 in percent, graded like the Qwen2.5-Math toolkit; the average is "
             "the plain mean over benchmarks.")
    uneven = [f"{b} ({', '.join(f'{RUN_NAMES[n]} {accs[n][b][1]}' for n in names if b in accs[n])})"
              for b in benches if len({accs[n][b][1] for n in names if b in accs[n]}) > 1]
    if uneven:
        doc.note("Not evaluated on the same problems (an evaluation is unfinished or was cut differently): "
                 + "; ".join(uneven) + ". The accuracies above are not comparable; the paired test below uses "
                 "only the problems both models have.")
    for against, other in (("base", "tuned"), ("base", "sft"), ("sft", "tuned")):
        cmp = data.comparison(other, against)
        if cmp is None:
            continue
        who, ref = RUN_NAMES[other], RUN_NAMES[against]
        doc.heading(3, f"Paired test: {who} vs {ref}")
        prow = [[b, r["n"], f"{r['acc_a']:.1f}", f"{r['acc_b']:.1f}", _fmt_signed(r["delta"]), _fmt_ci(r),
                 r["a_only"], r["b_only"], _fmt_p(r["p_value"])] for b, r in cmp["benchmarks"].items()]
        av, al = cmp["average"], cmp["all"]
        prow.append(["**all**", al["n"], f"{av['acc_a']:.1f}", f"{av['acc_b']:.1f}", _fmt_signed(av["delta"]),
                     _fmt_ci(al), al["a_only"], al["b_only"], _fmt_p(al["p_value"])])
        doc.table(["benchmark", "paired problems", ref, who, "change", "95% CI", f"only {ref} right",
                   f"only {who} right", "McNemar p"], prow)
        doc.para("p: exact two-sided McNemar test on the discordant problems (one model right, the other wrong); "
                 "95% CI: paired Wald interval of the change in points; the last row pools all problems (its CI "
                 "is of the pooled change) and averages the accuracies over benchmarks.")
    if "base" not in data.evals or len(data.evals) < 2:
        doc.note("Only one evaluated model: no paired test.")
    path = plot_accuracy(accs, benches, means, figdir / "accuracy.png")
    doc.figure(path, "Accuracy per benchmark (grouped bars; the last group is the average).", data.run_dir)


def plot_accuracy(accs: dict[str, dict[str, tuple[int, int]]], benches: list[str], means: dict[str, float | None],
                  path: Path) -> Path:
    import numpy as np

    fig = _new_figure(max(5.0, 1.3 * (len(benches) + 1) + 2), 3.6)
    ax = fig.add_subplot()
    groups = benches + ["average"]
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(accs))
    for k, (name, acc) in enumerate(accs.items()):
        vals = [100 * acc[b][0] / acc[b][1] if b in acc and acc[b][1] else np.nan for b in benches]
        vals.append(means[name] if means[name] is not None else np.nan)
        bars = ax.bar(x + (k - (len(accs) - 1) / 2) * width, vals, width, label=RUN_NAMES[name],
                      color=COLORS[name])
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(x, groups)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 118)
    ax.legend(fontsize=8, loc="upper center", ncols=len(accs), frameon=False)
    ax.set_title("Accuracy before and after")
    return _save(fig, path)


def _steps_view(records: list[dict]) -> dict[str, list]:
    """Flat per-step lists over all records (steps t >= 1, as the authors' analysis)."""
    out: dict[str, list] = {"kl": [], "he": [], "ha": [], "agree": []}
    for r in records:
        for t in range(1, len(r["kl"])):
            out["kl"].append(r["kl"][t])
            out["he"].append(r["expert_entropy"][t])
            out["ha"].append(r["amateur_entropy"][t])
            out["agree"].append(bool(r["top1_agree"][t]))
    return out


def _mean_median(vals: list[float]) -> tuple[float | None, float | None]:
    return (statistics.fmean(vals), statistics.median(vals)) if vals else (None, None)


def section_sampling(doc: Doc, data: RunData, figdir: Path, opts: dict) -> None:
    doc.heading(2, "Sampling: where the amateur departs from the expert")
    if data.records is None:
        doc.note("No samples.jsonl: sampling statistics and figures skipped.")
        return
    recs = data.records
    if not recs:
        doc.note("samples.jsonl holds no records.")
        return
    beta = data.sample_setting("beta")
    alpha = data.sample_setting("alpha")
    kls = [k for r in recs for k in r["kl"]]
    steps = [s for r in recs for s in r["steps"]]
    above = sum(k >= beta for k in kls) if beta is not None else None
    facts = [f"problems: {len(recs):,}", f"expert steps (tokens): {len(kls):,}",
             f"kept steps: {len(steps):,} ({100 * len(steps) / max(1, len(kls)):.1f}% of steps)"]
    if above is not None:
        facts.append(f"steps with KL >= beta ({beta}): {above:,} ({100 * above / max(1, len(kls)):.1f}%)")
    if steps:
        facts.append(f"mean plausible-set size (alpha {alpha}): "
                     f"{statistics.fmean(len(s['token_ids']) for s in steps):.2f}")
    if kls:
        q = statistics.quantiles(kls, n=20) if len(kls) > 1 else [kls[0]] * 19
        facts.append(f"KL: mean {statistics.fmean(kls):.3f}, median {statistics.median(kls):.3f}, "
                     f"p90 {q[17]:.3f}, p95 {q[18]:.3f}, max {max(kls):.3f}")
    doc.bullets(facts)
    if kls:
        path = plot_kl_histogram(kls, beta, len(steps) / len(kls), figdir / "kl_histogram.png")
        share = f"{100 * above / len(kls):.1f}% of steps have KL >= beta" if above is not None else "beta unknown"
        doc.figure(path, f"KL(p_E || p_A) per expert step (log-scale x; values below 1e-4 shown at 1e-4); "
                         f"{share}, {100 * len(steps) / len(kls):.1f}% kept.", data.run_dir)
        path = plot_kept_rate(recs, figdir / "kept_rate_by_position.png")
        doc.figure(path, "Kept-step rate by position in the trajectory (share of the trajectories still running "
                         "at that position whose step is kept).", data.run_dir)
    if steps:
        path = plot_set_sizes([len(s["token_ids"]) for s in steps], figdir / "plausible_set_size.png")
        doc.figure(path, "Plausible-set size |V_t| of the kept steps (tokens in the soft label).", data.run_dir)

    doc.heading(3, "KL and entropy by top-1 agreement")
    view = _steps_view(recs)
    n = len(view["kl"])
    if n == 0:
        doc.note("No steps after the first: agreement statistics skipped.")
        return
    rows = []
    for label, sel in (("top-1 agree", True), ("top-1 disagree", False), ("all", None)):
        idx = [i for i in range(n) if sel is None or view["agree"][i] == sel]
        cols = [label, f"{len(idx):,}", f"{100 * len(idx) / n:.1f}%"]
        for key in ("kl", "he", "ha"):
            mean, med = _mean_median([view[key][i] for i in idx])
            cols += [_fmt(mean), _fmt(med)]
        rows.append(cols)
    doc.table(["steps", "count", "share", "KL mean", "KL median", "H(p_E) mean", "H(p_E) median", "H(p_A) mean",
               "H(p_A) median"], rows)
    conf = [view["kl"][i] for i in range(n) if view["he"][i] < CONFIDENT_EXPERT_H and view["ha"][i] >
            UNCERTAIN_AMATEUR_H]
    tail = sum(k > HIGH_KL for k in view["kl"])
    doc.bullets([f"expert confident (H(p_E) < {CONFIDENT_EXPERT_H}) and amateur uncertain (H(p_A) > "
                 f"{UNCERTAIN_AMATEUR_H}): {len(conf):,} steps ({100 * len(conf) / n:.2f}%), mean KL "
                 f"{_fmt(statistics.fmean(conf) if conf else None)}",
                 f"KL > {HIGH_KL} (strong-signal steps): {tail:,} ({100 * tail / n:.2f}%)"])
    doc.para("Entropies in nats; steps t >= 1 as in the authors' analysis (pre_analysis_stats.py).")


def plot_kl_histogram(kls: list[float], beta: float | None, kept_share: float, path: Path,
                      floor: float = 1e-4) -> Path:
    import numpy as np

    vals = np.clip(np.asarray(kls, dtype=float), floor, None)
    hi = max(float(vals.max()), floor * 10)
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.hist(vals, bins=np.geomspace(floor, hi * 1.0001, 60), color="#4c72b0")
    ax.set_xscale("log")
    ax.set_xlabel("KL(p_E || p_A)  [nats, log scale]")
    ax.set_ylabel("steps")
    if beta is not None and beta > 0:
        above = float(np.mean(np.asarray(kls) >= beta))
        ax.axvline(beta, color="#c44e52", linestyle="--", linewidth=1.5)
        ax.text(0.98, 0.95, f"beta = {beta}\nKL >= beta: {100 * above:.1f}%\nkept: {100 * kept_share:.1f}%",
                transform=ax.transAxes, ha="right", va="top", fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "#cccccc"})
    ax.set_title("Expert-amateur KL per step")
    return _save(fig, path)


def kept_rate_by_position(records: list[dict], max_bins: int = 64) -> tuple[list[int], list[float], int]:
    """``(bin starts, kept rate per bin, bin width)``: kept steps / running trajectories, positions binned."""
    length = max((len(r["kl"]) for r in records), default=0)
    width = max(1, math.ceil(length / max_bins))
    nb = max(1, math.ceil(length / width))
    alive, kept = [0] * nb, [0] * nb
    for r in records:
        for t in range(len(r["kl"])):
            alive[t // width] += 1
        for s in r["steps"]:
            kept[s["pos"] // width] += 1
    starts = [b * width for b in range(nb) if alive[b]]
    rates = [kept[b] / alive[b] for b in range(nb) if alive[b]]
    return starts, rates, width


def plot_kept_rate(records: list[dict], path: Path) -> Path:
    starts, rates, width = kept_rate_by_position(records)
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot(starts, [100 * r for r in rates], marker="o", markersize=3, color="#55a868")
    ax.set_xlabel(f"position in the expert's trajectory (token{'s, bins of ' + str(width) if width > 1 else ''})")
    ax.set_ylabel("kept steps (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Kept-step rate by position")
    return _save(fig, path)


def plot_set_sizes(sizes: list[int], path: Path) -> Path:
    from collections import Counter

    counts = Counter(sizes)
    xs = sorted(counts)
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.bar(xs, [counts[x] for x in xs], color="#8172b2")
    ax.set_xlabel("plausible-set size |V_t| (tokens)")
    ax.set_ylabel("kept steps")
    if len(xs) <= 20:
        ax.set_xticks(xs)
    ax.set_title("Plausible-set size of kept steps")
    return _save(fig, path)


def section_training(doc: Doc, data: RunData, figdir: Path, opts: dict) -> None:
    doc.heading(2, "Training")
    s = data.train_summary
    if s is None and not data.metrics:
        doc.note("No adapter/summary.json or adapter/metrics.jsonl: training section skipped.")
        return
    if s is not None:
        doc.bullets([f"updates: {s.get('updates')}, kept steps seen (tuned tokens): {_fmt_int(s.get('tuned_tokens'))}"
                     f", epochs over the kept steps: {s.get('epochs')}",
                     f"trajectories: {_fmt_int(s.get('trajectories'))}, forward tokens: "
                     f"{_fmt_int(s.get('forward_tokens'))}, mode: {s.get('mode')}, trainable parameters: "
                     f"{_fmt_int(s.get('trainable_parameters'))}",
                     f"loss: {_fmt(s.get('first_loss'), 4)} (first update) -> {_fmt(s.get('final_loss'), 4)} (last)",
                     f"training time: {fmt_duration(s.get('train_time_s'))} (wall {fmt_duration(s.get('wall_time_s'))})"
                     ])
    else:
        doc.note("adapter/summary.json is missing: training has not finished (metrics so far are shown).")
    pts = [(m["update"], m["loss"]) for m in data.metrics if m.get("loss") is not None and "update" in m]
    if pts:
        fig = _new_figure()
        ax = fig.add_subplot()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 40 else None, markersize=3,
                color="#1f77b4")
        ax.set_xlabel("optimizer update")
        ax.set_ylabel("loss: KL(soft label || p_expert)")
        ax.set_title("Training loss")
        path = _save(fig, figdir / "training_loss.png")
        doc.figure(path, "Training loss per logged update (mean over the updates since the previous log).",
                   data.run_dir)
    else:
        doc.note("adapter/metrics.jsonl holds no loss records: loss curve skipped.")


def section_perplexity(doc: Doc, data: RunData, figdir: Path, opts: dict) -> None:
    doc.heading(2, "Gold-answer perplexity across checkpoints")
    p = data.perplexity
    points = (p or {}).get("checkpoints") or []
    if not points:
        why = (p or {}).get("skipped")
        doc.note(f"Perplexity analysis skipped ({why})." if why else "No perplexity.json: perplexity analysis skipped.")
        return
    base = next((c["perplexity"] for c in points if c.get("name") == "base"), None)
    rows = [[c.get("name"), c.get("step"), _fmt(c.get("mean_nll"), 4), _fmt(c.get("perplexity"), 3),
             f"{100 * (c['perplexity'] / base - 1):+.1f}%" if base else "-"] for c in points]
    doc.table(["checkpoint", "update", "mean NLL (nats/token)", "perplexity", "vs base"], rows)
    doc.para(f"Perplexity of the reference solutions of {p.get('problems', '?')} held-out problems given the chat "
             f"prompt (pooled over tokens), for the base expert and each training checkpoint.")
    pts = sorted((c["step"], c["perplexity"]) for c in points if c.get("step") is not None)
    fig = _new_figure(5.0, 3.2)
    ax = fig.add_subplot()
    ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", color="#c44e52")
    ax.set_xlabel("optimizer update (0 = base expert)")
    ax.set_ylabel("gold-answer perplexity")
    ax.set_title("Gold-answer perplexity")
    path = _save(fig, figdir / "perplexity.png")
    doc.figure(path, "Gold-answer perplexity across checkpoints.", data.run_dir)


def _question_of(prompt: str) -> str:
    """The last user turn of a ChatML prompt (the prompt itself when it is not ChatML)."""
    start = prompt.rfind("<|im_start|>user\n")
    if start < 0:
        return prompt.strip()
    body = prompt[start + len("<|im_start|>user\n"):]
    end = body.find("<|im_end|>")
    return (body[:end] if end >= 0 else body).strip()


def _short(text: str, n: int) -> str:
    text = text or ""
    return text if len(text) <= n else text[:n] + " [...]"


def section_case_study(doc: Doc, data: RunData, figdir: Path, opts: dict) -> None:
    doc.heading(2, "Case study")
    if "base" not in data.evals or "tuned" not in data.evals:
        doc.note("Needs both eval/base and eval/tuned: case study skipped.")
        return
    from .evaluate import ALL_BENCHMARKS

    base_dir, tuned_dir = data.evals["base"], data.evals["tuned"]
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
    doc.para(f"Problems the base expert got wrong and the tuned expert right: **{len(improved)}**; "
             f"the reverse: **{len(regressed)}**.")
    k = opts.get("cases", 5)
    for title, cases in (("Base wrong, tuned right", improved), ("Base right, tuned wrong", regressed)):
        if not cases or k <= 0:
            continue
        doc.heading(3, f"{title} (first {min(k, len(cases))} of {len(cases)})")
        for b, r, t in _spread(cases, k):
            doc.para(f"**{b} #{r['id']}**: gold `{r.get('gold')}`; base predicted `{r.get('pred')}`, tuned "
                     f"predicted `{t.get('pred')}`.")
            doc.pre(f"Question: {_short(_question_of(r.get('prompt', '')), 600)}\n\n"
                    f"--- base expert (first {COMPLETION_CHARS} chars) ---\n"
                    f"{_short(r.get('completion', ''), COMPLETION_CHARS)}\n\n"
                    f"--- tuned expert (first {COMPLETION_CHARS} chars) ---\n"
                    f"{_short(t.get('completion', ''), COMPLETION_CHARS)}")


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


class IdTokenizer:
    """Stand-in when no tokenizer loads: ``decode`` shows token ids, so :func:`sample.format_step` still works."""

    def decode(self, ids: Sequence[int], **_: Any) -> str:
        return " ".join(f"<{int(i)}>" for i in ids)


def resolve_tokenizer(tokenizer: Any, manifest: dict | None) -> tuple[Any, str | None]:
    """A tokenizer object from an object, a spec, or the manifest's expert; ``(None, why)`` when none loads.

    An embedded model's tokenizer is only read from its prepared checkpoint: a report never triggers the
    download and conversion of the weights.
    """
    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        return tokenizer, None
    spec = str(tokenizer) if tokenizer is not None else ((manifest or {}).get("expert") or {}).get("spec")
    if not spec:
        return None, "no tokenizer given and the samples manifest names no expert"
    try:
        from . import embedded
        from .models import load_tokenizer

        if spec in embedded.EMBEDDED and not (embedded.checkpoint_dir(spec) / "COMPLETE").exists():
            return None, f"the embedded model {spec!r} is not prepared yet"
        return load_tokenizer(spec), None
    except Exception as e:  # any failure: show ids instead
        return None, f"tokenizer {spec!r} could not be loaded ({type(e).__name__}: {str(e).splitlines()[0][:200]})"


def pick_kept_steps(records: list[dict], k: int) -> list[tuple[dict, dict]]:
    """``k`` kept steps at evenly spaced ranks of KL (highest first), so both ends of the range appear."""
    steps = sorted(((r, s) for r in records for s in r["steps"]), key=lambda rs: (-rs[1]["kl"], rs[0]["id"]))
    if k <= 0 or not steps:
        return []
    if len(steps) <= k:
        return steps
    idx = sorted({round(i * (len(steps) - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]
    return [steps[i] for i in idx]


def section_kept_steps(doc: Doc, data: RunData, figdir: Path, opts: dict) -> None:
    from .sample import format_step

    doc.heading(2, "Kept steps")
    if not data.records:
        doc.note("No samples.jsonl: kept-step examples skipped.")
        return
    chosen = pick_kept_steps(data.records, opts.get("kept_step_examples", 5))
    if not chosen:
        doc.note("No kept steps in samples.jsonl.")
        return
    tok, why = resolve_tokenizer(opts.get("tokenizer"), data.manifest)
    if tok is None:
        doc.note(f"Token ids shown instead of text: {why}.")
        tok = IdTokenizer()
    texts = []
    for rec, step in chosen:
        try:
            texts.append(format_step(rec, step, tok))
        except Exception as e:  # a tokenizer that cannot decode these ids: fall back to ids
            logger.warning("could not decode a kept step with the tokenizer (%s); showing ids", e)
            texts.append(format_step(rec, step, IdTokenizer()))
    doc.para(f"{len(chosen)} kept steps at evenly spaced ranks of KL (highest first), as `lightreasoner inspect` "
             f"prints them: the end of the prefix, both models' top tokens with probabilities, and the soft label.")
    doc.pre("\n\n".join(texts))


SECTIONS: list[tuple[str, Callable[[Doc, RunData, Path, dict], None]]] = [
    ("overview", section_overview), ("efficiency", section_efficiency), ("accuracy", section_accuracy),
    ("sampling", section_sampling), ("training", section_training), ("perplexity", section_perplexity),
    ("case study", section_case_study), ("kept steps", section_kept_steps),
]


# ---------------------------------------------------------------------------------------------------------------
# Entry points


def write_report(run_dir: str | Path, tokenizer: Any = None, *, cases: int = 5, kept_step_examples: int = 5) -> Path:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` for a run folder; return the Markdown path.

    ``tokenizer``: an object with ``decode`` or a model spec, for the kept-step examples (default: the samples
    manifest's expert). A section whose inputs are absent becomes a one-line note; a section that fails on odd
    inputs is logged and noted, never fatal.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise InputError(f"--run-dir {run}: no such folder; point to a folder written by `lightreasoner run`")
    data = RunData.load(run)
    doc = Doc()
    out = RunLayout(run).report
    figdir = out / "figures"
    opts = {"tokenizer": tokenizer, "cases": cases, "kept_step_examples": kept_step_examples}
    for name, build in SECTIONS:
        try:
            build(doc, data, figdir, opts)
        except Exception as e:  # noqa: BLE001 - a report of a partial or odd run must still be written
            logger.warning("report section %r failed; noted in the report", name, exc_info=True)
            doc.note(f"The {name} section could not be built ({type(e).__name__}: {e}).")
    md_path, html_path = out / "report.md", out / "report.html"
    for path, text in ((md_path, doc.markdown()), (html_path, doc.html(f"LightReasoner report: {run.name}"))):
        atomic_write(path, text)
    logger.info("wrote %s and %s (%d figures)", md_path, html_path, len(doc.figures))
    return md_path


@writes_output("report", kind="folder", field="run_dir")
def main(cfg: ReportConfig) -> int:
    """``lightreasoner report``: regenerate a run folder's report."""
    path = write_report(cfg.run_dir, cfg.tokenizer, cases=cfg.cases, kept_step_examples=cfg.kept_step_examples)
    print(path)
    return 0


__all__ = ["ReportConfig", "main", "write_report", "gold_perplexity", "RunData", "Doc", "kept_rate_by_position",
           "pick_kept_steps", "resolve_tokenizer", "lightreasoner_costs", "sft_costs", "fmt_duration"]
