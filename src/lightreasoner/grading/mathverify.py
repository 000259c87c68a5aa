"""Hugging Face Math-Verify's verdict on one completion, as lighteval and open-r1 compute it (``--grader math-verify``).

``parse`` the gold (how: :mod:`.golds`), ``parse`` the completion with Math-Verify's default prediction targets
(LaTeX, then plain expressions; for multiple choice a letter after "answer", or in LaTeX), then ``verify(gold, prediction)`` (gold first: the
comparison is not symmetric) with ``float_rounding=6``, the precision of ``math_verify.math_metric``. A gold that
does not parse is an error (lighteval raises there); a completion that does not parse is wrong.

Math-Verify bounds its own steps with ``signal.alarm`` (main thread only) and can still spend long in sympy, so
this runs in the grading worker process (:mod:`.worker`), whose per-answer timeout is the hard bound: it is called
only from there, and imports ``math_verify`` on first use.
"""

from __future__ import annotations

from typing import Any

from .extract import clean_completion
from .golds import ANSWER, LETTER, NUMBER, SOLUTION

FLOAT_ROUNDING = 6  # math_verify.math_metric's default precision, which it passes to verify
_TARGETS: dict[str, tuple[Any, Any]] = {}


def _targets(kind: str) -> tuple[Any, Any]:
    """(gold extraction targets, prediction extraction targets) of a gold kind."""
    if not _TARGETS:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, StringExtractionConfig

        prediction = (LatexExtractionConfig(), ExprExtractionConfig())
        letter = StringExtractionConfig(strings=("A", "B", "C", "D"), lowercase=False)
        _TARGETS.update({
            SOLUTION: ((LatexExtractionConfig(boxed_match_priority=0),), prediction),
            NUMBER: ((ExprExtractionConfig(),), prediction),
            ANSWER: ((LatexExtractionConfig(), ExprExtractionConfig()), prediction),
            LETTER: ((letter,), (letter, LatexExtractionConfig())),  # "Answer: C", or C in LaTeX ($C$, \\boxed{C})
        })
    return _TARGETS[kind]


def _shown(parsed: list) -> str | None:
    """What was extracted, as text: Math-Verify's matched string (the last item) when it kept one, else the
    parsed object's ``str``; ``None`` when nothing was extracted."""
    if not parsed:
        return None
    last = parsed[-1]
    return last if isinstance(last, str) else str(parsed[0])


def verdict(gold: str, kind: str, completion: str) -> dict[str, Any]:
    """``{"pred", "gold", "ok"}`` (or ``{"error"}`` when the gold does not parse) for one completion."""
    from math_verify import parse, verify

    gold_targets, pred_targets = _targets(kind)
    gold_parsed = parse(gold, gold_targets)
    if not gold_parsed:
        return {"error": f"Math-Verify found no answer in the gold {gold[:80]!r}"}
    pred_parsed = parse(clean_completion(completion), pred_targets)
    ok = bool(pred_parsed) and bool(verify(gold_parsed, pred_parsed, FLOAT_ROUNDING))
    return {"pred": _shown(pred_parsed), "gold": _shown(gold_parsed) or "", "ok": ok}


def warm_up() -> None:
    """Import Math-Verify and build its parsers once (the worker does this before taking requests)."""
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its timeout warnings: our worker bounds the time
    verdict("The answer is $\\boxed{\\frac{1}{2}}$.", SOLUTION, "So it is $\\boxed{0.5}$.")
    verdict("12", NUMBER, "12 apples")
    verdict("$x^2$", ANSWER, "$x \\cdot x$")
    verdict("B", LETTER, "The answer is (B).")
