"""Grading (example, completion) pairs: one answer at a time, each bounded, never raising for content."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .extract import _gold_field, _gold_field_text, _prepare_from_field, _rules_for
from .worker import _WORKER, INPROCESS_MAX_CHARS, _check_timeout, _judge, _too_long


@dataclass
class GradeResult:
    """One verdict: the prediction and gold as compared (``pred`` is ``None`` for an empty completion or when the
    answer was not graded), and ``error`` when it could not be graded (the verdict is then ``False``)."""

    pred: str | None
    gold: str
    correct: bool
    error: str | None = None


def _grade_one(rules: str, example: dict, completion: str, timeout: float) -> GradeResult:
    """Grade one pair (never raises for content): over-long text is refused, long text is graded whole in the
    worker under the timeout, the rest here (with the symbolic step in the worker)."""
    pred, gold = None, ""
    try:
        field = _gold_field(rules, example)
        wire = _gold_field_text(rules, field)
        reason = _too_long("completion", completion) or _too_long("gold", wire or "")
        if reason:
            return GradeResult(None, "", False, reason)
        if wire is not None and len(completion) + len(wire) > INPROCESS_MAX_CHARS:
            return GradeResult(*_WORKER.grade(rules, wire, completion, timeout))
        pred, _, gold = _prepare_from_field(rules, field, completion)
        correct, error = _judge(pred, gold, timeout)
        return GradeResult(pred, gold, bool(correct), error)
    except Exception as e:  # noqa: BLE001 - never raise for content; report it
        return GradeResult(pred, gold, False, f"{type(e).__name__}: {e}")


def grade_many(benchmark: str, examples: Sequence[dict], completions: Sequence[str], timeout: float = 3.0,
               progress: bool = True) -> list[GradeResult]:
    """Grade ``completions[i]`` against ``examples[i]``; symbolic comparisons share the one worker process.

    Never raises for any example or completion content: a failure, a timeout or over-long text gives
    ``correct=False`` with ``error`` set. An unknown ``benchmark``, unequal lengths or a ``timeout`` that is not a
    finite number > 0 raise ``ValueError``.
    """
    rules = _rules_for(benchmark)
    _check_timeout(timeout)
    if len(examples) != len(completions):
        raise ValueError(f"{len(examples)} examples but {len(completions)} completions")
    from tqdm.auto import tqdm

    results: list[GradeResult] = []
    n_right = 0
    bar = tqdm(total=len(examples), desc=f"grading {benchmark}", disable=not progress, dynamic_ncols=True)
    for example, completion in zip(examples, completions):
        results.append(_grade_one(rules, example, completion, timeout))
        n_right += results[-1].correct
        bar.update(1)
        bar.set_postfix(acc=f"{100.0 * n_right / len(results):.1f}", refresh=False)
    bar.close()
    return results


def grade(benchmark: str, example: dict, completion: str, timeout: float = 3.0) -> GradeResult:
    """Grade one completion (see :func:`grade_many`)."""
    return grade_many(benchmark, [example], [completion], timeout=timeout, progress=False)[0]
