"""Evaluating one benchmark with a model in memory: prompts, decoding, grading, records and their summary.

:func:`evaluate_model` builds each example's prompt (:func:`.benchmarks.build_prompt`), decodes with continuous
batching and stop strings (:func:`.generation.iter_generate`), grades each batch as it finishes
(:func:`.grading.grade_many`) and appends the records to a JSONL file, so a killed evaluation resumes where it
stopped. Under a launcher each rank evaluates every ``world_size``-th example into its shard and rank 0 merges
the shards in the benchmark's order (:func:`collect`, :mod:`.shards`): the same file a one-process run writes.
:func:`summarize_records` / :func:`overall_summary` turn records into the figures of ``summary.json``
(accuracy = mean verdict x 100, one decimal, with its 95% Wilson interval); :func:`summary_markdown` prints them.

Each record names its grader (``--grader``): records reused from a run with another grader (a record without the
field is ``qwen``'s) are graded again, never generated again (:func:`_regrade`).
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import shards
from .benchmarks import build_prompt, example_id
from .generation import iter_generate
from .grading import DEFAULT_TIMEOUT, grade_many
from .prompts import encode_prompts
from .stats import accuracy_ci
from .utils import JsonlAppender

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalParams:
    """How one benchmark is evaluated (``EvalConfig`` has these fields too and may be passed instead)."""

    prompt: str = "qwen25-math"  # qwen25-math | chat (see lightreasoner.prompts)
    shots: int = 0
    max_new_tokens: int = 2048
    batch_size: int = 32
    max_batch_tokens: int | None = 65536
    grade_timeout: float = DEFAULT_TIMEOUT
    grader: str = "qwen"  # qwen | math-verify (see lightreasoner.grading)

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


def plan(benchmark: str, examples: Sequence[Mapping[str, Any]], tokenizer: Any,
         params: EvalParams | Any) -> tuple[list[tuple[str, Mapping[str, Any], str]], int]:
    """The benchmark's work in its order: ``(id, example, prompt)`` per example with a question, and the number
    of examples skipped for an empty one. Ids are unique (a repeated id gets ``-<position>``)."""
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
    return items, skipped


def evaluate_model(model: Any, tokenizer: Any, benchmark: str, examples: Sequence[Mapping[str, Any]],
                   params: EvalParams | Any, output_path: str | Path | None = None, *,
                   progress: bool = True, rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Generate, grade and summarise one benchmark with an in-memory model.

    ``params``: an :class:`EvalParams` (or an object with its fields, such as an ``EvalConfig``). With ``output_path`` each batch's records are appended there
    and records already present (same ids) are reused, so a killed run resumes; at the end the file holds exactly
    this selection's records in the examples' order. Returns :func:`summarize_records`'s dict plus ``records``
    (one per scored example: id, prompt, completion, pred, gold, correct, new_tokens, finish_reason, seconds,
    error).

    Under a launcher (``world_size`` > 1, ``output_path`` needed) rank ``rank`` does only its share of the
    examples (:func:`.shards.share`) into its shard, marks it done and returns the figures of its share;
    rank 0 then calls :func:`collect` for the whole benchmark.
    """
    cfg = EvalParams.of(params)
    items, skipped = plan(benchmark, examples, tokenizer, cfg)
    path = Path(output_path) if output_path is not None else None
    if path is None and world_size > 1:
        raise ValueError("a sharded evaluation needs an output path")
    done: dict[str, dict] = {}
    if path is not None:  # records of earlier runs (or of an earlier larger --limit, kept aside) are reused
        done = shards.written(path, rank, world_size, also=[extra_path(path)])
    mine = shards.share(items, rank, world_size)
    todo = [it for it in mine if it[0] not in done]
    if len(todo) < len(mine):
        logger.info("%s: resuming, %d of %d already done", benchmark, len(mine) - len(todo), len(mine))
    t0 = time.perf_counter()
    out = None if path is None else path if world_size == 1 else shards.shard_path(path, rank)
    _regrade(benchmark, [(eid, ex) for eid, ex, _ in mine if eid in done], done, cfg, out)
    if todo:
        desc = benchmark if world_size == 1 else f"{benchmark} rank {rank}"
        done.update(_generate(model, tokenizer, benchmark, todo, cfg, out, desc, progress,
                              [done[eid] for eid, _, _ in mine if eid in done]))
    if world_size > 1:
        records = [done[eid] for eid, _, _ in mine]
        shards.mark_done(path, rank, [eid for eid, _, _ in mine], benchmark=benchmark,  # type: ignore[arg-type]
                         records=len(records), new_tokens=sum(r["new_tokens"] for r in records),
                         wall_seconds=round(time.perf_counter() - t0, 3))
        return {**summarize_records(benchmark, records, skipped_empty=skipped), "records": records}
    if path is None:
        records = [done[eid] for eid, _, _ in items]
    else:
        records = shards.merge_shards(path, [eid for eid, _, _ in items], leftovers=extra_path(path))
    return {**summarize_records(benchmark, records, skipped_empty=skipped), "records": records}


def collect(benchmark: str, examples: Sequence[Mapping[str, Any]], tokenizer: Any, params: EvalParams | Any,
            output_path: str | Path, world_size: int) -> tuple[dict[str, Any], dict[int, dict]]:
    """Rank 0, after its own share: wait for every rank's share of the benchmark, merge the shards into
    ``output_path`` in the benchmark's order (the file a one-process run writes) and summarise it as
    :func:`evaluate_model` does. Returns that summary and the ranks' marks (their counts and timings)."""
    path = Path(output_path)
    items, skipped = plan(benchmark, examples, tokenizer, params)
    ids = [eid for eid, _, _ in items]
    marks = shards.wait_for_marks(path, {r: shards.share(ids, r, world_size) for r in range(world_size)})
    records = shards.merge_shards(path, ids, leftovers=extra_path(path))
    if len(records) != len(ids):
        raise RuntimeError(f"{path}: {len(ids) - len(records)} of {len(ids)} records are missing after merging "
                           f"the ranks' shards; run the same command again to evaluate them")
    return {**summarize_records(benchmark, records, skipped_empty=skipped), "records": records}, marks


def _generate(model: Any, tokenizer: Any, benchmark: str, todo: Sequence[tuple[str, Mapping[str, Any], str]],
              cfg: EvalParams, out: Path | None, desc: str, progress: bool,
              before: Sequence[dict]) -> dict[str, dict]:
    """Decode, grade and (to ``out``) append the records of ``todo`` as batches finish; returns them by id
    (``before``: this share's records already done, for the progress bar)."""
    from tqdm.auto import tqdm

    n_right = sum(bool(r["correct"]) for r in before)
    new: dict[str, dict] = {}
    bar = tqdm(total=len(before) + len(todo), initial=len(before), desc=desc, disable=not progress,
               dynamic_ncols=True)
    appender = JsonlAppender(out) if out is not None else None
    try:
        ids = encode_prompts(tokenizer, [p for _, _, p in todo], cfg.prompt)
        for idx, outs, _ in iter_generate(model, tokenizer, ids, max_new_tokens=cfg.max_new_tokens,
                                          batch_size=cfg.batch_size, max_batch_tokens=cfg.max_batch_tokens):
            batch = [todo[i] for i in idx]
            grades = grade_many(benchmark, [copy.deepcopy(dict(ex)) for _, ex, _ in batch],
                                [o.text for o in outs], timeout=cfg.grade_timeout, progress=False, grader=cfg.grader)
            recs = [{"id": eid, "prompt": prompt, "completion": o.text, **_verdict(g, cfg),
                     "new_tokens": o.new_tokens, "finish_reason": o.finish_reason, "seconds": round(o.seconds, 4)}
                    for (eid, _, prompt), o, g in zip(batch, outs, grades)]
            if appender is not None:
                appender.write_many(recs)
            new.update((r["id"], r) for r in recs)
            n_right += sum(r["correct"] for r in recs)
            bar.update(len(recs))
            bar.set_postfix(acc=f"{100.0 * n_right / (len(before) + len(new)):.1f}")
    finally:
        bar.close()
        if appender is not None:
            appender.close()
    return new


def _verdict(g: Any, cfg: EvalParams) -> dict[str, Any]:
    """A record's verdict fields from a :class:`.grading.GradeResult`, with the grading that gave it."""
    return {"pred": g.pred, "gold": g.gold, "correct": bool(g.correct),
            "error": None if g.error is None else str(g.error), "grader": cfg.grader,
            "grade_timeout": cfg.grade_timeout}



def _regrade(benchmark: str, kept: Sequence[tuple[str, Mapping[str, Any]]], done: dict[str, dict],
             cfg: EvalParams, out: Path | None) -> None:
    """Grade again, with ``cfg.grader`` and ``cfg.grade_timeout``, the records of ``kept`` (``(id, example)`` of
    this share already done) that another grader or timeout judged; the new records replace them in ``done`` and
    are appended to ``out`` (a later line of an id replaces an earlier one when the file is read back)."""
    stale = [(eid, ex) for eid, ex in kept if (done[eid].get("grader", "qwen"), done[eid].get(
        "grade_timeout", DEFAULT_TIMEOUT)) != (cfg.grader, cfg.grade_timeout)]  # older records: the default
    if not stale:
        return
    logger.info("%s: grading %d finished records again (%s grader, %gs per check)", benchmark, len(stale),
                cfg.grader, cfg.grade_timeout)
    grades = grade_many(benchmark, [copy.deepcopy(dict(ex)) for _, ex in stale],
                        [done[eid]["completion"] for eid, _ in stale], timeout=cfg.grade_timeout, progress=False,
                        grader=cfg.grader)
    recs = [{**done[eid], **_verdict(g, cfg)} for (eid, _), g in zip(stale, grades)]
    if out is not None:
        with JsonlAppender(out) as appender:
            appender.write_many(recs)
    done.update((r["id"], r) for r in recs)


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
    for key in ("model", "adapter", "prompt", "shots", "max_new_tokens", "dtype", "grader"):
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
