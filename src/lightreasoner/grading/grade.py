"""Grading (example, completion) pairs with either grader: one answer at a time, each bounded, never raising for
content. An example is a benchmark row, or a :class:`.golds.StoredGold` from a toolkit file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .extract import _gold_field, _gold_field_text, _prediction, _prepare_from_field, _rules_for
from .golds import StoredGold, check_grader, math_verify_gold
from .worker import _WORKER, DEFAULT_TIMEOUT, INPROCESS_MAX_CHARS, _check_timeout, _judge, _too_long


@dataclass
class GradeResult:
    """One verdict: the prediction and gold as compared (``pred`` is ``None`` for an empty completion or when the
    answer was not graded), and ``error`` when it could not be graded (the verdict is then ``False``)."""

    pred: str | None
    gold: str
    correct: bool
    error: str | None = None


def _grade_one(rules: str, example: dict | StoredGold, completion: str, timeout: float) -> GradeResult:
    """Grade one pair by the toolkit's rules (never raises for content): over-long text is refused, long text is
    graded whole in the worker under the timeout, the rest here (with the symbolic step in the worker)."""
    pred, gold = None, ""
    try:
        stored = isinstance(example, StoredGold)
        field = example.gt if stored else _gold_field(rules, example)
        wire = field if stored else _gold_field_text(rules, field)
        reason = _too_long("completion", completion) or _too_long("gold", wire or "")
        if reason:
            return GradeResult(None, "", False, reason)
        if wire is not None and len(completion) + len(wire) > INPROCESS_MAX_CHARS:
            ask = _WORKER.grade_stored if stored else _WORKER.grade
            return GradeResult(*ask(rules, wire, completion, timeout))
        if stored:
            pred, gold = _prediction(rules, field, completion), field
        else:
            pred, _, gold = _prepare_from_field(rules, field, completion)
        correct, error = _judge(pred, gold, timeout)
        return GradeResult(pred, gold, bool(correct), error)
    except Exception as e:  # noqa: BLE001 - never raise for content; report it
        return GradeResult(pred, gold, False, f"{type(e).__name__}: {e}")


def _grade_one_math_verify(rules: str, example: dict | StoredGold, completion: str, timeout: float) -> GradeResult:
    """Math-Verify's verdict on one pair (never raises for content), computed whole in the worker under the
    timeout."""
    try:
        gold, kind = math_verify_gold(rules, example)
        reason = _too_long("completion", completion) or _too_long("gold", gold)
        if reason:
            return GradeResult(None, "", False, reason)
        return GradeResult(*_WORKER.math_verify(gold, kind, completion, timeout))
    except Exception as e:  # noqa: BLE001 - never raise for content; report it
        return GradeResult(None, "", False, f"{type(e).__name__}: {e}")


_GRADE_ONE = {"qwen": _grade_one, "math-verify": _grade_one_math_verify}


def grade_many(benchmark: str, examples: Sequence[dict | StoredGold], completions: Sequence[str],
               timeout: float = DEFAULT_TIMEOUT, progress: bool = True, grader: str = "qwen") -> list[GradeResult]:
    """Grade ``completions[i]`` against ``examples[i]`` (a benchmark row, or a :class:`StoredGold`) with
    ``grader`` (``qwen``: the toolkit's rules; ``math-verify``: Math-Verify's); work that may take long shares
    the one worker process.

    Never raises for any example or completion content: a failure, a timeout or over-long text gives
    ``correct=False`` with ``error`` set. An unknown ``benchmark`` or ``grader``, unequal lengths or a ``timeout``
    that is not a finite number > 0 raise ``ValueError``.
    """
    rules = _rules_for(benchmark)
    check_grader(grader)
    _check_timeout(timeout)
    if len(examples) != len(completions):
        raise ValueError(f"{len(examples)} examples but {len(completions)} completions")
    from tqdm.auto import tqdm

    one = _GRADE_ONE[grader]
    results: list[GradeResult] = []
    n_right = 0
    bar = tqdm(total=len(examples), desc=f"grading {benchmark}", disable=not progress, dynamic_ncols=True)
    for example, completion in zip(examples, completions):
        results.append(one(rules, example, completion, timeout))
        n_right += results[-1].correct
        bar.update(1)
        bar.set_postfix(acc=f"{100.0 * n_right / len(results):.1f}", refresh=False)
    bar.close()
    return results


def grade(benchmark: str, example: dict | StoredGold, completion: str, timeout: float = DEFAULT_TIMEOUT,
          grader: str = "qwen") -> GradeResult:
    """Grade one completion (see :func:`grade_many`)."""
    return grade_many(benchmark, [example], [completion], timeout=timeout, progress=False, grader=grader)[0]
