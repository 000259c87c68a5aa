"""The ordered rules of the toolkit's ``math_equal`` (section 7 of ``/work/shared/EVAL_SPEC.md``); the symbolic
rule is passed in, so the same rules run cheaply here (deferring sympy) and whole in the worker."""

from __future__ import annotations

import math
import re
from typing import Callable

from .extract import LETTERS, _last_choice_letter

class _NeedsSymbolic(Exception):
    """Raised by the cheap pass when a verdict needs sympy (the comparison then goes to the worker)."""


def _defer_symbolic(a: str, b: str) -> bool:
    raise _NeedsSymbolic


def _parse_number(text: str) -> float | None:
    """A float after removing commas; a trailing ``%`` or ``\\%`` divides by 100; else ``None``."""
    text = str(text).replace(",", "")
    try:
        return float(text)
    except ValueError:
        pass
    if text.endswith("%"):
        text = text[:-1]
        if text.endswith("\\"):
            text = text[:-1]
        try:
            return float(text) / 100
        except ValueError:
            pass
    return None


def _isclose(a: float, b: float) -> bool:
    return math.isclose(b, a, rel_tol=1e-4)


_LIST_FORMAT = re.compile(r"(\(|\[).+(\)|\])")
_MATRIX_BEGINS = ("\\begin{pmatrix}", "\\begin{bmatrix}")
_MATRIX_ENDS = ("\\end{pmatrix}", "\\end{bmatrix}")


def _set_groups(text: str) -> list[str]:
    """The toolkit's ``re.findall(r"\\{.*,.*\\}", text)`` in linear time (the regex is cubic on long lines).

    ``.`` stops at newlines and both ``.*`` are greedy, so a line holds at most one match: from its first ``{`` to
    its last ``}``, provided a comma lies between them.
    """
    groups = []
    for line in text.split("\n"):
        close = line.rfind("}")
        comma = line.rfind(",", 0, close) if close >= 0 else -1
        start = line.find("{", 0, comma) if comma >= 0 else -1
        if start >= 0:
            groups.append(line[start:close + 1])
    return groups


def _sets_to_pmatrix(text: str) -> str:
    """The gold's ``{a,b,...}`` groups rewritten as pmatrix (used when only the prediction is a pmatrix)."""
    groups = _set_groups(text.strip())
    return ", ".join("\\begin{pmatrix}" + g.strip("{}").replace(",", "\\") + "\\end{pmatrix}" for g in groups)


def _is_matrix(text: str) -> bool:
    return text.startswith(_MATRIX_BEGINS) and text.endswith(_MATRIX_ENDS)


def _matrix_rows(text: str) -> list[str]:
    body = text[len("\\begin{pmatrix}"):-len("\\end{pmatrix}")]
    return [row.strip() for row in body.split("\\\\") if row.strip()]


def _as_difference(equation: str) -> str:
    lhs, rhs = equation.split("=")
    return f"{lhs.strip()} - ({rhs.strip()})"


def _math_equal(pred: str | None, gold: str | None, symbolic: Callable[[str, str], bool]) -> bool:
    """The toolkit's ``math_equal`` (include_percentage=True, is_close=True); ``symbolic`` decides rule 11."""
    # 1. None
    if pred is None or gold is None:
        return False
    # 2. plain string equality
    if pred.strip().lower() == gold.strip().lower():
        return True
    # 3. letter gold and the grader's letter cleaner
    if gold in LETTERS and _last_choice_letter(pred) == gold:
        return True
    # 4. numbers: final when both sides are numeric (gold, gold/100 and gold*100 accepted)
    p, g = _parse_number(pred), _parse_number(gold)
    if p is not None and g is not None:
        return any(_isclose(p, target) for target in (g / 100, g, g * 100))
    # 5. empty prediction
    if not pred:
        return False
    pred, gold = pred.strip(), gold.strip()
    # 6. pmatrix prediction vs {a,b} gold
    if "pmatrix" in pred and "pmatrix" not in gold:
        gold = _sets_to_pmatrix(gold)
    # 7. brackets
    p_str, g_str = pred, gold
    if (pred.startswith("[") and pred.endswith("]") and not gold.startswith("(")) or (
            pred.startswith("(") and pred.endswith(")") and not gold.startswith("[")):
        p_str, g_str = p_str.strip("[]()"), g_str.strip("[]()")
    for ch in "{}()":
        p_str, g_str = p_str.replace(ch, ""), g_str.replace(ch, "")
    if p_str.lower() == g_str.lower():
        return True
    # 8. tuples / intervals, element by element (bracket type ignored); every element is evaluated, like the toolkit
    if _LIST_FORMAT.match(pred) and _LIST_FORMAT.match(gold):
        p_parts, g_parts = pred[1:-1].split(","), gold[1:-1].split(",")
        if len(p_parts) == len(g_parts):
            if all([_math_equal(a, b, symbolic) for a, b in zip(p_parts, g_parts)]):
                return True
    # 9. matrices, cell by cell
    if _is_matrix(pred) and _is_matrix(gold):
        p_rows, g_rows = _matrix_rows(pred), _matrix_rows(gold)
        matched = len(p_rows) == len(g_rows)
        for p_row, g_row in zip(p_rows, g_rows) if matched else ():
            p_cells, g_cells = p_row.split("&"), g_row.split("&")
            if len(p_cells) != len(g_cells) or not all(
                    [_math_equal(a, b, symbolic) for a, b in zip(p_cells, g_cells)]):
                matched = False
                break
        if matched:
            return True
    # 10. equations
    if pred.count("=") == 1 and gold.count("=") == 1:
        p_eq, g_eq = _as_difference(pred), _as_difference(gold)
        if symbolic(p_eq, g_eq) or symbolic(f"-({p_eq})", g_eq):
            return True
    elif pred.count("=") == 1 and len(pred.split("=")[0].strip()) <= 2 and "=" not in gold:
        if _math_equal(pred.split("=")[1], gold, symbolic):
            return True
    elif gold.count("=") == 1 and len(gold.split("=")[0].strip()) <= 2 and "=" not in pred:
        if _math_equal(pred, gold.split("=")[1], symbolic):
            return True
    # 11. symbolic
    return bool(symbolic(pred, gold))
