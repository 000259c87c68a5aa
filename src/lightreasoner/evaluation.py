"""Evaluating one benchmark with a model in memory: prompts, decoding, grading, records and their summary.

:func:`evaluate_model` builds each example's prompt (:func:`.benchmarks.build_prompt`), decodes with continuous
batching and stop strings (:func:`.generation.iter_generate`), grades each batch as it finishes
(:func:`.grading.grade_many`) and appends the records to a JSONL file, so a killed evaluation resumes where it
stopped. :func:`summarize_records` / :func:`overall_summary` turn records into the figures of ``summary.json``
(accuracy = mean verdict x 100, one decimal, with its 95% Wilson interval); :func:`summary_markdown` prints them.
"""

from __future__ import annotations

import copy
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .benchmarks import build_prompt, example_id
from .generation import iter_generate
from .grading import grade_many
from .prompts import encode_prompts
from .stats import accuracy_ci
from .utils import JsonlAppender, read_complete_jsonl, write_jsonl

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalParams:
    """How one benchmark is evaluated (``EvalConfig`` has these fields too and may be passed instead)."""

    prompt: str = "qwen25-math"  # qwen25-math | chat (see lightreasoner.prompts)
    shots: int = 0
    max_new_tokens: int = 2048
    batch_size: int = 32
    max_batch_tokens: int | None = 65536
    grade_timeout: float = 3.0

    @classmethod
    def of(cls, cfg: Any) -> "EvalParams":
        """The parameters of any object with these attributes (an ``EvalConfig``)."""
        return cls(**{f: getattr(cfg, f) for f in cls.__dataclass_fields__})



def would_call_tool(completion: str) -> bool:
    """The toolkit's condition for another round with executed code (not done here): no ``boxed``, ends in ```."""
    return "boxed" not in completion and completion.endswith("```")


def summarize_records(benchmark: str, records: Sequence[Mapping[str, Any]], **extra: Any) -> dict[str, Any]:
    """Per-benchmark figures from its records: accuracy = mean(correct) x 100 rounded to one decimal."""
    n = len(records)
    correct = sum(bool(r["correct"]) for r in records)
    new_tokens = sum(int(r.get("new_tokens", 0)) for r in records)
    seconds = sum(float(r.get("seconds", 0.0)) for r in records)
    return {
        "benchmark": benchmark, "n": n, "correct": correct,
        "accuracy": round(100.0 * correct / n, 1) if n else None,
        "accuracy_ci95": accuracy_ci(correct, n) if n else None,
        "truncated": sum(r.get("finish_reason") == "length" for r in records),
        "grade_errors": sum(r.get("error") is not None for r in records),
        "tool_call_skipped": sum(would_call_tool(r.get("completion", "")) for r in records),
        "new_tokens": new_tokens, "generation_seconds": round(seconds, 3),
        "tokens_per_second": round(new_tokens / seconds, 1) if seconds > 0 else None,
        **extra,
    }


def evaluate_model(model: Any, tokenizer: Any, benchmark: str, examples: Sequence[Mapping[str, Any]],
                   params: EvalParams | Any, output_path: str | Path | None = None, *,
                   progress: bool = True) -> dict[str, Any]:
    """Generate, grade and summarise one benchmark with an in-memory model.

    ``params``: an :class:`EvalParams` (or an object with its fields, such as an ``EvalConfig``). With ``output_path`` each batch's records are appended there
    and records already present (same ids) are reused, so a killed run resumes; at the end the file holds exactly
    this selection's records in the examples' order. Returns :func:`summarize_records`'s dict plus ``records``
    (one per scored example: id, prompt, completion, pred, gold, correct, new_tokens, finish_reason, seconds,
    error).
    """
    cfg = EvalParams.of(params)
    items: list[tuple[str, Mapping[str, Any], str]] = []
    seen: set[str] = set()
    skipped = 0
    for pos, ex in enumerate(examples):
        prompt = build_prompt(benchmark, ex, tokenizer, cfg.prompt, cfg.shots)
        if not prompt:
            skipped += 1
            continue
        eid = example_id(ex, pos)
        if eid in seen:
            eid = f"{eid}-{pos}"
        seen.add(eid)
        items.append((eid, ex, prompt))
    if skipped:
        logger.info("%s: skipped %d examples with an empty question (as the toolkit does)", benchmark, skipped)

    done: dict[str, dict] = {}
    extra: dict[str, dict] = {}
    path = Path(output_path) if output_path is not None else None
    if path is not None:
        # Records outside this selection (say, of an earlier larger --limit) are kept aside in
        # <benchmark>.extra.jsonl and reused when a later selection includes them again.
        wanted = {eid for eid, _, _ in items}
        for r in read_complete_jsonl(extra_path(path)) + read_complete_jsonl(path):
            (done if r.get("id") in wanted else extra)[r["id"]] = r
        if extra:
            logger.info("%s: %d finished records are outside this selection; kept in %s", path, len(extra),
                        extra_path(path))
    todo = [it for it in items if it[0] not in done]
    if done:
        logger.info("%s: resuming, %d of %d already done", benchmark, len(done), len(items))

    if todo:
        from tqdm.auto import tqdm

        n_right = sum(bool(r["correct"]) for r in done.values())
        bar = tqdm(total=len(items), initial=len(done), desc=benchmark, disable=not progress, dynamic_ncols=True)
        appender = JsonlAppender(path) if path is not None else None
        try:
            ids = encode_prompts(tokenizer, [p for _, _, p in todo], cfg.prompt)
            for idx, outs, secs in iter_generate(model, tokenizer, ids, max_new_tokens=cfg.max_new_tokens,
                                                 batch_size=cfg.batch_size, max_batch_tokens=cfg.max_batch_tokens):
                batch = [todo[i] for i in idx]
                grades = grade_many(benchmark, [copy.deepcopy(dict(ex)) for _, ex, _ in batch],
                                    [o.text for o in outs], timeout=cfg.grade_timeout, progress=False)
                recs = []
                for (eid, _, prompt), o, g in zip(batch, outs, grades):
                    recs.append({"id": eid, "prompt": prompt, "completion": o.text, "pred": g.pred,
                                 "gold": g.gold, "correct": bool(g.correct), "new_tokens": o.new_tokens,
                                 "finish_reason": o.finish_reason, "seconds": round(o.seconds, 4),
                                 "error": None if g.error is None else str(g.error)})
                if appender is not None:
                    appender.write_many(recs)
                for r in recs:
                    done[r["id"]] = r
                    n_right += r["correct"]
                bar.update(len(recs))
                bar.set_postfix(acc=f"{100.0 * n_right / len(done):.1f}")
        finally:
            bar.close()
            if appender is not None:
                appender.close()

    records = [done[eid] for eid, _, _ in items]
    if path is not None:
        if extra:
            write_jsonl(extra_path(path), list(extra.values()))
        write_jsonl(path, records)
        if not extra:
            extra_path(path).unlink(missing_ok=True)
    summary = summarize_records(benchmark, records, skipped_empty=skipped)
    summary["records"] = records
    return summary


def extra_path(path: Path) -> Path:
    """Where an evaluation keeps finished records that are outside its current selection."""
    return path.with_name(path.stem + ".extra.jsonl")


def overall_summary(per_benchmark: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The run's figures: per-benchmark summaries (without records) and the plain mean of their accuracies."""
    rows = {b: {k: v for k, v in s.items() if k != "records"} for b, s in per_benchmark.items()}
    accs = [s["accuracy"] for s in rows.values() if s["accuracy"] is not None]
    tokens = sum(s["new_tokens"] for s in rows.values())
    secs = sum(s["generation_seconds"] for s in rows.values())
    return {"benchmarks": rows, "order": list(rows),
            "average": round(statistics.fmean(accs), 1) if accs else None,
            "totals": {"n": sum(s["n"] for s in rows.values()), "correct": sum(s["correct"] for s in rows.values()),
                       "truncated": sum(s["truncated"] for s in rows.values()), "new_tokens": tokens,
                       "generation_seconds": round(secs, 3),
                       "tokens_per_second": round(tokens / secs, 1) if secs > 0 else None}}


def summary_markdown(summary: Mapping[str, Any], title: str = "Evaluation") -> str:
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)

    lines = [f"# {title}", ""]
    for key in ("model", "adapter", "prompt", "shots", "max_new_tokens", "dtype"):
        if summary.get(key) is not None:
            lines.append(f"- {key}: `{summary[key]}`")
    def ci(v: Any) -> str:
        return "-" if not v else f"{v[0]:.1f} .. {v[1]:.1f}"

    lines += ["", "| benchmark | n | correct | accuracy | 95% CI | truncated | new tokens | gen. seconds | tokens/s |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for b, s in summary["benchmarks"].items():
        lines.append(f"| {b} | {s['n']} | {s['correct']} | {f(s['accuracy'])} | {ci(s.get('accuracy_ci95'))} | "
                     f"{s['truncated']} | {s['new_tokens']} | {f(s['generation_seconds'])} | "
                     f"{f(s['tokens_per_second'])} |")
    t = summary["totals"]
    lines.append(f"| **average** | {t['n']} | {t['correct']} | **{f(summary['average'])}** | | {t['truncated']} | "
                 f"{t['new_tokens']} | {f(t['generation_seconds'])} | {f(t['tokens_per_second'])} |")
    lines += ["", "95% CI: Wilson score interval of the accuracy, in points."]
    skipped = {b: s["tool_call_skipped"] for b, s in summary["benchmarks"].items() if s.get("tool_call_skipped")}
    if skipped:
        lines += ["", f"Completions that would have run the toolkit's code continuation (not done here): {skipped}."]
    return "\n".join(lines) + "\n"
