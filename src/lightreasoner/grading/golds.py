"""What each grader compares a completion against: read from a benchmark row, or taken as stored in a toolkit file.

Two graders (:data:`GRADERS`): ``qwen``, the Qwen2.5-Math toolkit's rules (this package), and ``math-verify``,
Hugging Face's Math-Verify as lighteval and open-r1 run it (:mod:`.mathverify`). A gold comes either from a
benchmark row (the toolkit's readers, :mod:`.extract`) or from a line of the toolkit's own per-sample output
(:class:`StoredGold`: its ``gt``, already parsed as the toolkit compared it, and ``gt_cot``).

For Math-Verify the gold text and the way it is parsed follow Math-Verify's own lighteval tasks
(``math_verify/tasks.py``): a MATH-style solution is read by its LaTeX, ``\\boxed{}`` first
(``LatexExtractionConfig(boxed_match_priority=0)``, as ``math_hard``); a numeric answer (GSM8K's text after
``####``, SVAMP, ASDiv, MAWPS) as an expression (``ExprExtractionConfig``, as ``gsm8k``); an OlympiadBench final
answer (LaTeX between ``$``) by both; a multiple-choice letter as a string (``StringExtractionConfig``). A toolkit
file's stored gold is read the same way (a MATH-style one from its ``gt_cot``, the solution).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .extract import _gold_field, _gold_field_text
from .normalise import _PARENTHESISED, _sub_bounded

GRADERS = ("qwen", "math-verify")

# How Math-Verify reads a gold text (the kinds are mapped to extraction configs in .mathverify).
SOLUTION, NUMBER, ANSWER, LETTER = "solution", "number", "answer", "letter"
_KINDS = {"math": SOLUTION, "minerva_math": SOLUTION, "olympiadbench": ANSWER, "mmlu_stem": LETTER}  # else NUMBER


@dataclass(frozen=True)
class StoredGold:
    """A gold as the toolkit stored it in its per-sample output: ``gt`` (the gold it compared against, after its
    second parsing pass) and ``gt_cot`` (the worked solution, ``"None"`` where the dataset has none)."""

    gt: str
    gt_cot: str | None = None


def check_grader(grader: str) -> None:
    if grader not in GRADERS:
        raise ValueError(f"unknown grader {grader!r}; choose from {', '.join(GRADERS)}")


def math_verify_gold(rules: str, example: dict | StoredGold) -> tuple[str, str]:
    """(gold text, kind) for Math-Verify (see the module doc); cheap on any row, nothing is parsed here. A gold
    read as LaTeX that has no ``$`` gets them (OlympiadBench's tuples, a toolkit file's ``gt``), since Math-Verify
    reads little LaTeX outside delimiters."""
    kind = _KINDS.get(rules, NUMBER)
    if isinstance(example, StoredGold):
        if kind == SOLUTION and example.gt_cot not in (None, "", "None"):
            text: Any = example.gt_cot
        else:
            text, kind = example.gt, (ANSWER if kind == SOLUTION else kind)
    else:
        text = _gold_field(rules, example)
        if kind == NUMBER:
            text = _gold_field_text(rules, text)
            if rules == "asdiv" and isinstance(text, str):  # "9 (apples)": the unit is not part of the answer
                text = _sub_bounded(_PARENTHESISED, "", text, ")")
    if not isinstance(text, str):
        raise TypeError(f"the gold field is a {type(text).__name__}, not text")
    if kind == ANSWER and "$" not in text:
        text = f"${text}$"
    return text.strip(), kind
