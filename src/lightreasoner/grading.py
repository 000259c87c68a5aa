"""Grading as the Qwen2.5-Math evaluation toolkit does it (prompt type ``qwen25-math-cot``), verdict for verdict.

This is an independent implementation of ``/work/shared/EVAL_SPEC.md`` (the toolkit in QwenLM/Qwen2.5-Math,
folder ``evaluation/``, snapshot a45202b). The pipeline for one (example, completion) pair is:

1. ``clean_completion``: right-strip, strip, cut at the first stop string (``</s>``, ``<|im_end|>``,
   ``<|endoftext|>``) and strip again.
2. ``extract_prediction`` = ``strip_string(extract_answer(text))``: predictions are normalised **twice**;
   an empty text (or ``"error"``) gives ``None``.
3. ``parse_gold``: the per-dataset gold, parsed in two passes exactly as the toolkit's generation loop and then its
   scorer do (MATH normalised once, Minerva once without unit removal, every other dataset twice).
4. The multiple-choice repair of the toolkit's main loop (a letter gold re-reads the whole completion).
5. ``math_equal``: the toolkit's 12 ordered rules. A comparison that the cheap rules decide never leaves this
   process; one that needs the symbolic step (sympy) runs whole in one reused worker process with a per-comparison
   timeout (3 s, as the toolkit's pebble pool), so a pathological answer costs at most the timeout and is wrong.

Hostile text. No model or file text ever reaches ``eval``/``exec``/``sympify``/``parse_expr``: where the toolkit
calls sympy's ``parse_expr`` (which ``eval``-s), a whitelisted walk over the answer's ``ast`` builds the same sympy
object (:func:`_parse_python`; anything off the whitelist is refused and the next parser tried), the two LaTeX
parsers get a ``sympy.Number`` that reads number tokens the same way instead of via ``sympify``
(:func:`_guard_latex_parsers`), and a side no parser read is only compared as a string. The worker also runs
under an address-space limit. Grading one answer is bounded as a whole: every cleaning regex is linear, a
completion longer than ``INPROCESS_MAX_CHARS`` is graded whole (cleaning, extraction, all rules) in the worker
under the timeout, and text longer than ``MAX_TEXT_CHARS`` is not graded (wrong, with the reason in ``error``).

Dependencies: sympy, latex2sympy2_extended (installed with math-verify; stands in for the toolkit's bundled
latex2sympy2 1.9.0), antlr4-python3-runtime (sympy's ``parse_latex`` wants 4.11; with another 4.x runtime we drive
sympy's own generated 4.11 parser directly, which the runtime accepts), word2number.
"""

from __future__ import annotations

import ast
import atexit
import functools
import json
import logging
import math
import operator
import os
import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from word2number import w2n

from .config import option
from .grading_data import MMLU_STEM_DEMOS, UNIT_TEXTS
from .utils import InputError

logger = logging.getLogger("lightreasoner.grading")

# The seven benchmarks of the paper's table, in its order.
BENCHMARKS: tuple[str, ...] = ("gsm8k", "math", "svamp", "asdiv", "minerva_math", "olympiadbench", "mmlu_stem")
# Also graded: MATH-500 (with the ``math`` rules; the toolkit has no such data name) and MAWPS.
ALL_BENCHMARKS: tuple[str, ...] = BENCHMARKS + ("math500", "mawps")
_RULES = {name: name for name in ALL_BENCHMARKS} | {"math500": "math"}

MULTIPLE_CHOICE = ("mmlu_stem", "sat_math", "aqua", "gaokao2023")  # extract_answer returns the choice letter
SKIP_UNIT = ("carp_en", "minerva_math")  # no unit-word removal for these
LETTERS = ("A", "B", "C", "D", "E")
STOP_STRINGS: tuple[str, ...] = ("</s>", "<|im_end|>", "<|endoftext|>")

SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
QWEN25_MATH_COT_TEMPLATE = ("<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n"
                            "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n")

# Few-shot demos (question, answer); only mmlu_stem has them (Qwen's sh/eval.sh runs it 5-shot).
FEW_SHOT: dict[str, list[tuple[str, str]]] = {"mmlu_stem": [tuple(d) for d in MMLU_STEM_DEMOS]}


def _rules_for(benchmark: str) -> str:
    try:
        return _RULES[benchmark]
    except KeyError:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose from {', '.join(ALL_BENCHMARKS)}") from None


# ---------------------------------------------------------------------------------------------------------------
# Prompt
# ---------------------------------------------------------------------------------------------------------------

def build_qwen25_math_prompt(question: str, shots: Sequence[tuple[str, str]] = ()) -> str:
    """The raw ``qwen25-math-cot`` prompt string (ChatML markup included; no chat template is applied).

    Few-shot: each demo becomes ``q + "\\n" + a``; demos are joined by a blank line and the question follows after
    another blank line, all inside one user turn. Only spaces are stripped from the ends.
    """
    text = question
    if shots:
        text = "\n\n".join(q + "\n" + a for q, a in shots) + "\n\n" + question
    return QWEN25_MATH_COT_TEMPLATE.replace("{input}", text).strip(" ")


# ---------------------------------------------------------------------------------------------------------------
# strip_string: the toolkit's answer normaliser, step by step
# ---------------------------------------------------------------------------------------------------------------

# Every pattern here runs in linear time on any input (each was checked on 50,000-character adversarial strings):
# the lazy "opener .*? closer" ones are applied through _sub_bounded, the digit ones have a (?<!\d) guard that
# keeps them from retrying inside a digit run, and the toolkit's trailing-text and set patterns are plain functions.
_ARRAY_BEGIN = re.compile(r"\\begin\{array\}\{.*?\}")
_ARRAY_END = re.compile(r"\\end\{array\}")
# (literal text that must occur for the pattern to match, pattern); the unit words are regexes whose only
# metacharacter is "." (the cheap substring test skips most of the ~260 scans on long strings).
_UNIT_PATTERNS = tuple((unit.split(".")[0], re.compile(r"(^|\W)" + unit + r"($|\W)")) for unit in UNIT_TEXTS)
_TEXT_GROUP = re.compile(r"\\text\{(.*?)\}")
_MBOX_GROUP = re.compile(r"\\mbox{.*?}")
_PARENTHESISED = re.compile(r"\(.*?\)")
# The toolkit's (\d+)\.0*([^\d]) and (\d+)\.0*$: a match can only start where a digit run starts (a later start
# in the same run needs the same run end), so the guard changes no match but stops the quadratic retries.
_ZERO_DECIMALS_INNER = re.compile(r"(?<!\d)(\d+)\.0*([^\d])")
_ZERO_DECIMALS_END = re.compile(r"(?<!\d)(\d+)\.0*$")
_SQRT_SHORTHAND = re.compile(r"\\sqrt(\w+)")
_VARIABLE_PREFIXES = ("x=", "y=", "z=", "x\\in", "y\\in", "z\\in", "x\\to", "y\\to", "z\\to")


def _sub_bounded(pattern: re.Pattern, repl: str, text: str, closer: str) -> str:
    """``pattern.sub(repl, text)`` for a lazy ``opener.*?closer`` pattern, in linear time.

    No match can run past the last ``closer`` of its line (``.`` stops at newlines), so each line is cut there and
    only the head is searched: the skipped tail is where every attempt would scan to the line end (quadratic).
    """
    lines = text.split("\n")
    for n, line in enumerate(lines):
        end = line.rfind(closer)
        if end >= 0:
            end += len(closer)
            lines[n] = pattern.sub(repl, line[:end]) + line[end:]
    return "\n".join(lines)


def _cut_trailing_text(s: str) -> str:
    """The toolkit's ``re.sub(r"\\text{.*?}$", "", s)`` for a string without newlines, in linear time: when ``s``
    ends with ``}``, everything from its first ``\\text{`` on goes (the regex retries every ``\\text{`` to the end)."""
    start = s.find("\\text{")
    if start < 0 or not s.endswith("}"):
        return s
    return s[:start]


def _words_to_number(text: str) -> str:
    """word2number's reading of ``text`` (it ignores non-number words: ``"one apple"`` -> ``"1"``), else ``text``."""
    try:
        return str(w2n.word_to_num(text))
    except Exception:
        return text


def _brace_frac_shorthands(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{72}`` -> ``\\frac{1}{72}``; a ``\\frac`` with fewer than two
    characters after it leaves the whole string unchanged."""
    head, *parts = s.split("\\frac")
    out = [head]
    for part in parts:
        if part.startswith("{"):
            out.append(part)
            continue
        if len(part) < 2:
            return s
        a, b, rest = part[0], part[1], part[2:]
        out.append("{" + a + "}{" + b + "}" + rest if b != "{" else "{" + a + "}" + b + rest)
    return "\\frac".join(out)


def _slash_to_frac(s: str) -> str:
    """``a/b`` (exactly one slash, canonical integers, or any side containing ``sqrt``) -> ``\\frac{a}{b}``."""
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        a, b = (p if "sqrt" in p else int(p) for p in parts)
    except ValueError:
        return s
    if s != f"{a}/{b}":
        return s
    return "\\frac{" + str(a) + "}{" + str(b) + "}"


def strip_string(string: Any, skip_unit: bool = False) -> str:
    """The toolkit's ``strip_string``: 21 ordered normalisation steps (see EVAL_SPEC.md section 6)."""
    s = str(string).strip()
    # 1. newlines, trailing dots
    s = s.replace("\n", "").rstrip(".")
    # 2. \! ; array -> pmatrix ; bmatrix -> pmatrix
    s = s.replace("\\!", "")
    s = _sub_bounded(_ARRAY_BEGIN, r"\\begin{pmatrix}", s, "}")
    s = _ARRAY_END.sub(r"\\end{pmatrix}", s)
    s = s.replace("bmatrix", "pmatrix")
    # 3. tfrac/dfrac -> frac ; relations
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    # 4. \left \right \{ \}
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("\\{", "{").replace("\\}", "}")
    # 5. a trailing \text{...} (from the first \text{ to a closing brace at the very end), unless that empties it
    cut = _cut_trailing_text(s).strip()
    if cut != "" and cut != s:
        s = cut
    # 6. unit words, two passes over the list, each removal kept only if something remains
    if not skip_unit:
        for _ in range(2):
            for needle, pattern in _UNIT_PATTERNS:
                if needle not in s:
                    continue
                cut = pattern.sub(r"\1\2", s)
                if cut != "":
                    s = cut
    # 7. degrees, dollars, \( \)
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\(", "").replace("\\)", "")
    # 8. number words
    s = _words_to_number(s)
    # 9. \text{X} -> X ; variable prefixes (before spaces are removed)
    s = _sub_bounded(_TEXT_GROUP, r"\1", s, "}")
    for key in _VARIABLE_PREFIXES:
        s = s.replace(key, "")
    # 10. empty set, the real line
    s = s.replace("\\emptyset", "{}").replace("(-\\infty,\\infty)", "\\mathbb{R}")
    # 11. percent signs ; " ." and "{." get a leading zero
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    # 12. infinity
    s = s.replace("infinity", "\\infty")
    if "\\infty" not in s:
        s = s.replace("inf", "\\infty")
    s = s.replace("+\\inity", "\\infty")  # present in the toolkit; practically never fires
    # 13. "and", \mathbf, \mbox{...}
    s = s.replace("and", "").replace("\\mathbf", "")
    s = _sub_bounded(_MBOX_GROUP, "", s, "}")
    # 14. j -> i when there is no i
    if "j" in s and "i" not in s:
        s = s.replace("j", "i")
    # 15. zero-only decimal parts
    s = _ZERO_DECIMALS_INNER.sub(r"\1\2", s)
    s = _ZERO_DECIMALS_END.sub(r"\1", s)
    # 16. empty ; leading "."
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    # 17. "k = 5" -> " 5" (one "=", left side of at most two characters)
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        s = sides[1]
    # 18. \sqrt3 -> \sqrt{3}
    s = _SQRT_SHORTHAND.sub(r"\\sqrt{\1}", s)
    # 19. spaces
    s = s.replace(" ", "")
    # 20. \frac shorthands ; 21. a/b
    s = _brace_frac_shorthands(s)
    return _slash_to_frac(s)


# ---------------------------------------------------------------------------------------------------------------
# Answer extraction
# ---------------------------------------------------------------------------------------------------------------

_CHOICE = re.compile(r"\b(A|B|C|D|E)\b")
_CHOICE_TRIGGERS = ("choice is", "answer is")
_CHOICE_SPLIT = re.compile("|".join(_CHOICE_TRIGGERS))
_LAST_NUMBER = re.compile(r"-?\d*\.?\d+")
_NEWLINE_AND_INDENT = re.compile(r"\n\s*")


def choice_answer_clean(text: str) -> str:
    """The toolkit's multiple-choice reader (parser version).

    With more than one "choice is"/"answer is", only the text before the first blank line counts. After the last
    trigger the **first** standalone A-E letter of the upper-cased text wins; with no trigger, the **last** one (so
    an English article "a" counts as ``A``). With no letter, the cleaned text itself is returned.
    """
    pred = text.strip("\n")
    if any(pred.count(t) > 1 for t in _CHOICE_TRIGGERS):
        pred = pred.split("\n\n")[0]
    pieces = _CHOICE_SPLIT.split(pred)
    triggered = len(pieces) > 1
    if triggered:
        pred = pieces[-1]
    pred = pred.strip("\n").rstrip(".").rstrip("/").strip(" ").lstrip(":")
    letters = _CHOICE.findall(pred.upper()) or [pred.strip().strip(".")]
    pred = letters[0] if triggered else letters[-1]
    return pred.rstrip(".").rstrip("/")


def _last_choice_letter(text: str) -> str:
    """The grader's simpler letter cleaner: the last standalone A-E letter of the upper-cased text, no triggers."""
    pred = text.strip("\n").rstrip(".").rstrip("/").strip(" ").lstrip(":")
    letters = _CHOICE.findall(pred.upper())
    pred = letters[-1] if letters else pred.strip().strip(".")
    return pred.rstrip(".").rstrip("/")


def _boxed_content(text: str) -> str:
    """Content after the last ``boxed``: brace-balanced if it opens with ``{`` (to the end when never closed),
    else up to the first ``$``, stripped."""
    tail = text.split("boxed")[-1]
    if not tail:
        return ""
    if tail[0] != "{":
        return tail.split("$")[0].strip()
    depth = 1
    for i in range(1, len(tail)):
        c = tail[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return tail[1:i]
    return tail[1:]


def extract_answer(text: str, benchmark: str) -> str:
    """The toolkit's ``extract_answer`` (section 6 of the spec); ends with one ``strip_string``."""
    text = text.replace("\u043a\u0438", "")  # the "ки" step tag
    if benchmark in MULTIPLE_CHOICE:
        return choice_answer_clean(text)
    if "final answer is $" in text and "$. I hope" in text:  # Minerva style
        pred = text.split("final answer is $", 1)[1].split("$. I hope", 1)[0].strip()
    elif "boxed" in text:
        if not text.split("boxed")[-1]:
            return ""
        pred = _boxed_content(text)
    elif "he answer is" in text:
        pred = text.split("he answer is")[-1].strip()
    elif "final answer is" in text:
        pred = text.split("final answer is")[-1].strip()
    elif "答案是" in text:
        pred = text.split("答案是")[1].strip().split("\n\n")[0].strip()
    else:
        numbers = _LAST_NUMBER.findall(text.replace(",", ""))
        pred = numbers[-1] if numbers else ""
    # (the toolkit's "mmlu" letter step here is unreachable: mmlu_stem returned above)
    pred = _NEWLINE_AND_INDENT.sub("", pred)
    if pred[:1] == ":":
        pred = pred[1:]
    if pred[-1:] == ".":
        pred = pred[:-1]
    if pred[-1:] == "/":
        pred = pred[:-1]
    return strip_string(pred, skip_unit=benchmark in SKIP_UNIT)


def clean_completion(text: str) -> str:
    """Right-strip and strip; cut at the first stop string and strip again (the toolkit's post-generation step)."""
    code = text.rstrip().strip()
    for stop in STOP_STRINGS:
        if stop in code:
            code = code.split(stop)[0].strip()
    return code


def extract_prediction(benchmark: str, completion: str) -> str | None:
    """``strip_string(extract_answer(...))`` of the completion after :func:`clean_completion` (idempotent, so a
    cleaned text may be passed too); ``None`` when it is empty or ``"error"``. No multiple-choice repair here."""
    rules = _rules_for(benchmark)
    code = clean_completion(completion)
    if not code or code == "error":
        return None
    return strip_string(extract_answer(code, rules), skip_unit=rules in SKIP_UNIT)


# ---------------------------------------------------------------------------------------------------------------
# Questions and golds
# ---------------------------------------------------------------------------------------------------------------

def _gold_field(rules: str, example: dict) -> Any:
    """The row's raw gold, before any normalisation: the solution text (math, minerva_math), the text after
    ``####`` (gsm8k), the answer letter (mmlu_stem), else the dataset's answer field. Cheap on any row."""
    if rules in ("math", "minerva_math"):
        return example["solution"]
    if rules == "gsm8k":
        return example["answer"].split("####")[1]
    if rules == "svamp":
        return example["Answer"]
    if rules == "asdiv":
        return example["answer"]
    if rules == "mawps":
        return example["target"]
    if rules == "mmlu_stem":
        return "ABCD"[example["answer"]]
    if rules == "olympiadbench":
        return example["final_answer"][0]
    raise ValueError(rules)  # pragma: no cover - _rules_for guards this


def _first_pass_from_field(rules: str, field: Any) -> str:
    """``parse_ground_truth`` given the raw gold (the gold the toolkit stores, and uses for the MC repair)."""
    if rules in ("math", "minerva_math"):
        gold = extract_answer(field, rules)
    elif rules == "asdiv":
        gold = _sub_bounded(_PARENTHESISED, "", field, ")")
    elif rules == "olympiadbench":
        gold = field.strip("$")
    else:
        gold = field
    if rules in SKIP_UNIT:
        return gold.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    return strip_string(gold)


def _first_pass_gold(rules: str, example: dict) -> str:
    """``parse_ground_truth`` on a raw row."""
    return _first_pass_from_field(rules, _gold_field(rules, example))


def _gold_passes_from_field(rules: str, field: Any) -> tuple[str, str]:
    """(first-pass gold, second-pass gold) given the raw gold; the second is what ``math_equal`` compares
    against."""
    first = _first_pass_from_field(rules, field)
    if rules == "math":
        second = extract_answer(str(field).strip(), rules)
    elif rules in SKIP_UNIT:
        second = first
    else:
        second = strip_string(first)
    return first, second


def _gold_passes(rules: str, example: dict) -> tuple[str, str]:
    """(first-pass gold, second-pass gold) of a raw row."""
    return _gold_passes_from_field(rules, _gold_field(rules, example))


def parse_gold(benchmark: str, example: dict) -> str:
    """The gold answer as finally compared (after the toolkit's second parsing pass at scoring time)."""
    return _gold_passes(_rules_for(benchmark), example)[1]


def parse_question(benchmark: str, example: dict) -> str:
    """The question text the toolkit puts into the prompt, with the (True or False) / (Yes or No) suffix.

    Does not modify ``example`` (the toolkit rewrites mmlu_stem's ``choices`` in place; we do not).
    """
    rules = _rules_for(benchmark)
    if rules == "asdiv":
        question = f"{example['body'].strip()} {example['question'].strip()}"
    elif rules == "svamp":
        body = example["Body"].strip()
        if not body.endswith("."):
            body += "."
        question = f"{body} {example['Question'].strip()}"
    elif rules == "mmlu_stem":
        options = list(example["choices"])
        if len(options) != 4:
            raise ValueError(f"mmlu_stem: expected 4 choices, got {len(options)}")
        labelled = " ".join(f"({label}) {str(opt).strip()}" for label, opt in zip("ABCD", options))
        question = f"{example['question'].strip()}\nAnswer Choices: {labelled}"
    else:
        question = next((example[k] for k in ("question", "problem", "Question", "input") if k in example), "")
    gold = _first_pass_gold(rules, example).lower()
    if gold in ("true", "false"):
        question += " (True or False)"
    if gold in ("yes", "no"):
        question += " (Yes or No)"
    return question.strip()


# ---------------------------------------------------------------------------------------------------------------
# Equality: the ordered rules of the toolkit's math_equal
# ---------------------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------------------
# Symbolic comparison (runs only in the worker process)
# ---------------------------------------------------------------------------------------------------------------

# Python-syntax answers are read by a whitelisted walk over their ``ast`` (never ``eval``), in place of sympy's
# ``parse_expr``. The result is the object ``parse_expr(text)`` (standard transformations, evaluate=True) gives:
# numbers become Integer / Float-from-source-text, names on the list below become those sympy objects, any other
# name a Symbol (or, called directly, an undefined Function), and operators apply Python's operators to them.
# Everything else is refused, and the next parser is tried, as when parse_expr raised.

_SAFE_SYMPY_NAMES = (
    # constants
    "pi", "E", "I", "oo", "zoo", "nan", "EulerGamma", "GoldenRatio", "Catalan", "true", "false",
    # elementary and special functions
    "sqrt", "cbrt", "root", "real_root", "exp", "log", "ln", "sin", "cos", "tan", "cot", "sec", "csc", "asin",
    "acos", "atan", "acot", "asec", "acsc", "atan2", "sinh", "cosh", "tanh", "coth", "sech", "csch", "asinh",
    "acosh", "atanh", "acoth", "asech", "acsch", "Abs", "sign", "floor", "ceiling", "frac", "re", "im", "arg",
    "conjugate", "factorial", "factorial2", "binomial", "gamma", "beta", "zeta", "erf", "erfc", "gcd", "lcm",
    "Max", "Min", "Mod", "fibonacci", "catalan", "harmonic",
    # numbers, relations, sets, containers, calculus
    "Rational", "Integer", "Float", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Interval", "FiniteSet", "Union",
    "Intersection", "Complement", "Tuple", "Matrix", "Sum", "Product", "Integral", "Derivative", "Limit", "diff",
    "integrate", "limit",
)
_SAFE_BUILTIN_NAMES = ("abs", "round", "pow", "sum")  # parse_expr's namespace also maps max, min to Max, Min

_BINARY_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow, ast.MatMult: operator.matmul,
    ast.LShift: operator.lshift, ast.RShift: operator.rshift, ast.BitOr: operator.or_, ast.BitXor: operator.xor,
    ast.BitAnd: operator.and_}
_UNARY_OPS: dict[type, Callable[[Any], Any]] = {
    ast.UAdd: operator.pos, ast.USub: operator.neg, ast.Invert: operator.invert, ast.Not: operator.not_}
_COMPARE_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
    ast.GtE: operator.ge}
_ALLOWED_NODES = (ast.Expression, ast.Constant, ast.Name, ast.Load, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.And,
                  ast.Or, ast.Compare, ast.Call, ast.Tuple, ast.List, ast.Set, ast.Dict, ast.Subscript,
                  *_BINARY_OPS, *_UNARY_OPS, *_COMPARE_OPS)
# parse_expr's repeated-decimal notation 0.1[6] = 0.1666...: a decimal literal directly indexed by a digit literal
_REPEATED_DECIMAL = re.compile(r"([\d_]*)\.([\d_]*)\s*\[\s*([\d_]+)\s*\]")


class _Refused(ValueError):
    """The text holds something the whitelisted reader does not build (the next parser is tried instead)."""


@functools.lru_cache(maxsize=None)
def _parse_expr_names() -> frozenset[str]:
    """The names sympy's ``parse_expr`` resolves to objects instead of symbols: its namespace (``from sympy import
    *``, the builtin functions, ``max``/``min``) less what its ``auto_symbol`` still makes a Symbol."""
    import builtins
    import types

    import sympy
    from sympy.assumptions.ask import AssumptionKeys

    namespace = {name: getattr(sympy, name) for name in sympy.__all__}
    namespace.update((n, v) for n, v in vars(builtins).items() if isinstance(v, types.BuiltinFunctionType))
    return frozenset({"max", "min"} | {n for n, v in namespace.items()
                                       if isinstance(v, (AssumptionKeys, sympy.Basic, type)) or callable(v)})


@functools.lru_cache(maxsize=None)
def _safe_names() -> dict[str, Any]:
    """name -> the object ``parse_expr`` resolves it to, for the whitelisted names only."""
    import builtins

    import sympy

    table = {name: getattr(sympy, name) for name in _SAFE_SYMPY_NAMES}
    table.update((name, getattr(builtins, name)) for name in _SAFE_BUILTIN_NAMES)
    table.update(max=sympy.Max, min=sympy.Min)
    return table


class _Source:
    """The text being read, for the source of a node (``ast`` offsets count UTF-8 bytes within a line)."""

    def __init__(self, text: str) -> None:
        self.lines = [line.encode("utf-8") for line in re.split(r"\r\n|\r|\n", text)]

    def segment(self, node: ast.expr) -> str:
        if node.lineno != node.end_lineno:
            raise _Refused("a token spanning lines")
        return self.lines[node.lineno - 1][node.col_offset:node.end_col_offset].decode("utf-8")

    def followed_by_paren(self, node: ast.expr) -> bool:
        """Whether the next token after ``node`` on its line is ``(`` (parse_expr then reads a name as a function)."""
        return self.lines[node.end_lineno - 1][node.end_col_offset:].lstrip(b" \t\x0c").startswith(b"(")


def _repeated_decimal_parts(node: ast.Subscript, source: _Source) -> tuple[str, str, str] | None:
    """(integer part, decimals, repetend) when ``node`` is written like ``0.1[6]``, else ``None``."""
    if not (isinstance(node.value, ast.Constant) and type(node.value.value) is float
            and isinstance(node.slice, ast.Constant) and type(node.slice.value) is int):
        return None
    match = _REPEATED_DECIMAL.fullmatch(source.segment(node))
    return match.groups() if match else None


def _check_python_tree(tree: ast.Expression, source: _Source) -> None:
    """Raise :class:`_Refused` unless every node of ``tree`` is one the reader builds: numbers, names (a
    non-sympy-object callable only where it is called), operators, comparisons, calls by name with positional
    arguments, tuples, lists, sets, dicts and repeated decimals. No attribute, string, lambda, comprehension,
    keyword argument, star, slice or other subscript, conditional or assignment gets through."""
    resolved, safe = _parse_expr_names(), _safe_names()
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise _Refused(f"{type(node).__name__} is not read")
        if isinstance(node, ast.Constant) and type(node.value) not in (int, float, bool, type(None)):
            raise _Refused(f"a {type(node.value).__name__} constant is not read")
        elif isinstance(node, ast.Name):
            if node.id in resolved and node.id not in safe:
                raise _Refused(f"{node.id!r} is not a whitelisted name")
            if node.id in safe and callable(safe[node.id]) and not _is_sympy_object(safe[node.id]) \
                    and id(node) not in called:
                raise _Refused(f"{node.id!r} is only read when called")
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.keywords:
                raise _Refused("only calls of a name with positional arguments are read")
        elif isinstance(node, ast.Dict) and any(key is None for key in node.keys):
            raise _Refused("dict unpacking is not read")
        elif isinstance(node, ast.Subscript) and _repeated_decimal_parts(node, source) is None:
            raise _Refused("subscripts are not read (other than repeated decimals like 0.1[6])")


def _is_sympy_object(value: Any) -> bool:
    from sympy import Basic
    from sympy.matrices import MatrixBase

    return isinstance(value, (Basic, MatrixBase))


def _build_number(node: ast.Constant, source: _Source) -> Any:
    """parse_expr's ``auto_number``: an int literal -> Integer, a float literal -> Float of its source text;
    True/False/None stay Python values."""
    from sympy import Float, Integer

    if type(node.value) is int:
        return Integer(node.value)
    if type(node.value) is float:
        return Float(source.segment(node))
    return node.value


def _build_repeated_decimal(node: ast.Subscript, source: _Source) -> Any:
    """parse_expr's ``repeated_decimals``: ``a.b[r]`` = a + b/10^len(b) + r/(9...9 0...0)."""
    from sympy import Integer, Rational

    whole, decimals, repetend = (part.replace("_", "") for part in _repeated_decimal_parts(node, source))
    if not repetend.lstrip("0"):
        raise _Refused("an all-zero repetend")  # parse_expr's rewrite is a syntax error there
    zeros = "0" * len(decimals)
    return (Integer(int(whole or "0")) + Rational(int(decimals or "0"), int("1" + zeros))
            + Rational(int(repetend), int("9" * len(repetend) + zeros)))


def _build_callee(node: ast.Call, source: _Source) -> Any:
    """The object a called name stands for: a whitelisted one, or (parse_expr's ``auto_symbol``) an undefined
    Function when the name is directly followed by ``(``, else a Symbol (which cannot be called)."""
    from sympy import Function, Symbol

    name = node.func.id
    safe = _safe_names()
    if name in safe:
        return safe[name]
    return Function(name) if source.followed_by_paren(node.func) else Symbol(name)


def _build_compare(node: ast.Compare, source: _Source) -> Any:
    """Python's chained comparison (``a < b < c`` is ``a < b and b < c``) on the built values."""
    left = _build_python(node.left, source)
    result: Any = True
    for op, comparator in zip(node.ops, node.comparators):
        right = _build_python(comparator, source)
        result = _COMPARE_OPS[type(op)](left, right)
        if len(node.ops) > 1 and not result:
            return result
        left = right
    return result


def _build_bool_op(node: ast.BoolOp, source: _Source) -> Any:
    """Python's ``and`` / ``or`` (short-circuit, returning an operand)."""
    value: Any = None
    for operand in node.values:
        value = _build_python(operand, source)
        if bool(value) == isinstance(node.op, ast.Or):
            return value
    return value


def _build_python(node: ast.AST, source: _Source) -> Any:
    """The value of a node of a tree that passed :func:`_check_python_tree`."""
    if isinstance(node, ast.Expression):
        return _build_python(node.body, source)
    if isinstance(node, ast.Constant):
        return _build_number(node, source)
    if isinstance(node, ast.Name):
        safe = _safe_names()
        if node.id in safe:
            return safe[node.id]
        from sympy import Symbol

        return Symbol(node.id)
    if isinstance(node, ast.BinOp):
        return _BINARY_OPS[type(node.op)](_build_python(node.left, source), _build_python(node.right, source))
    if isinstance(node, ast.UnaryOp):
        return _UNARY_OPS[type(node.op)](_build_python(node.operand, source))
    if isinstance(node, ast.BoolOp):
        return _build_bool_op(node, source)
    if isinstance(node, ast.Compare):
        return _build_compare(node, source)
    if isinstance(node, ast.Call):
        function = _build_callee(node, source)
        value = function(*[_build_python(arg, source) for arg in node.args])
        if isinstance(value, (str, bytes)):
            raise _Refused("a call gave a string")
        return value
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = [_build_python(e, source) for e in node.elts]
        return {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict):
        return {_build_python(k, source): _build_python(v, source) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Subscript):
        return _build_repeated_decimal(node, source)
    raise _Refused(f"{type(node).__name__} is not read")  # pragma: no cover - _check_python_tree refuses it first


def _read_python_tree(text: str) -> tuple[ast.Expression, _Source]:
    """The checked ``ast`` of ``text`` (stripped, as parse_expr does) and its source; raises on anything else."""
    text = text.strip()
    if "!" in text.replace("!=", ""):
        raise _Refused("factorial notation is not read")  # parse_expr's "5!"; the LaTeX parsers read it
    source = _Source(text)
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        raise _Refused(f"not a Python expression ({type(e).__name__})") from None
    _check_python_tree(tree, source)
    return tree, source


def _parse_python(text: str) -> Any:
    """``parse_expr(text)`` without ``eval``: the whitelisted reading of a Python-syntax answer (see above).

    Raises :class:`_Refused` (or whatever sympy raises while building) where ``parse_expr`` would have been asked
    for anything outside the whitelist; the result holds no Python string anywhere.
    """
    tree, source = _read_python_tree(text)
    return _build_python(tree, source)


def _is_safe_python_expression(text: str) -> bool:
    """Whether ``text`` passes the reader's whitelist (a static check: nothing is built)."""
    try:
        _read_python_tree(text)
    except _Refused:
        return False
    return True


def _safe_number(*obj: Any) -> Any:
    """``sympy.Number(*obj)``, except that a string is read by :func:`_parse_python` (with sympify's ``^`` -> ``**``)
    instead of ``sympify``, which ``eval``-s. Same results for every string the reader reads; the others raise."""
    from sympy import Number

    if len(obj) != 1 or not isinstance(obj[0], str) or obj[0].lower() in ("nan", "inf", "+inf", "-inf"):
        return Number(*obj)
    value = _parse_python(obj[0].replace("\n", "").replace("^", "**"))
    if not isinstance(value, Number):
        raise ValueError(f'String "{obj[0]}" does not denote a Number')
    return value


class _SafeNumberType(type):
    """Metaclass of :class:`_SafeNumber`: calls go to :func:`_safe_number`, type checks to ``sympy.Number``."""

    def __call__(cls, *obj: Any) -> Any:
        return _safe_number(*obj)

    def __instancecheck__(cls, value: Any) -> bool:
        from sympy import Number

        return isinstance(value, Number)

    def __subclasscheck__(cls, sub: type) -> bool:
        from sympy import Number

        return issubclass(sub, Number)


class _SafeNumber(metaclass=_SafeNumberType):
    """Stands in for ``sympy.Number`` inside the LaTeX parsers (see :func:`_guard_latex_parsers`)."""


class _SympyWithSafeNumber:
    """The ``sympy`` module as the LaTeX parsers see it: every attribute is sympy's, but ``Number`` is
    :class:`_SafeNumber`."""

    def __init__(self, module: Any) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return _SafeNumber if name == "Number" else getattr(self._module, name)


@functools.lru_cache(maxsize=None)
def _guard_latex_parsers() -> None:
    """Close the one path from LaTeX text to ``eval`` inside the two LaTeX parsers (installed once per process).

    sympy's ``_parse_latex_antlr`` (``convert_number``, ``convert_frac``'s ``\\\\frac12`` digits) and
    latex2sympy2_extended (``parse_number`` for numbers, percentages and E-notation, and ``convert_number`` for a
    whole input like ``1,234.5``) build numbers with ``sympy.Number(token_text)``, and ``Number`` of a string calls
    ``sympify``, i.e. ``parse_expr``, i.e. ``eval``. The lexers only let digits, separators and exponents into those
    tokens, but the text is still the model's, so both modules get a ``sympy`` (and latex2sympy2 a ``Number``) whose
    ``Number`` reads strings with :func:`_parse_python`. Nothing else in either module turns input text into
    objects other than through antlr, ``Symbol``/``Function`` names, ``Rational``/``Integer`` of Python numbers
    and their own recursive parse; latex2sympy2's ``parse_expr`` call only reads ``variable_values``, which we never
    pass.
    """
    import sympy
    from latex2sympy2_extended import latex2sympy2
    from sympy.parsing.latex import _parse_latex_antlr

    view = _SympyWithSafeNumber(sympy)
    _parse_latex_antlr.sympy = view
    latex2sympy2.sympy = view
    latex2sympy2.Number = _SafeNumber


@functools.lru_cache(maxsize=None)
def _antlr_is_411() -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("antlr4-python3-runtime").startswith("4.11")
    except PackageNotFoundError:
        return False


def _sympy_parse_latex(text: str):
    """sympy's ``parse_latex`` (non-strict). With an antlr runtime other than 4.11 (sympy refuses it by version
    string) the same generated parser is driven directly, which the 4.x runtime runs unchanged."""
    _guard_latex_parsers()
    if _antlr_is_411():
        from sympy.parsing.latex import parse_latex

        return parse_latex(text)
    import antlr4
    from sympy.parsing.latex import _parse_latex_antlr as impl

    if impl.LaTeXParser is None or impl.MathErrorListener is None:
        raise ImportError("sympy's LaTeX parser is unavailable")
    text = text.strip()
    listener = impl.MathErrorListener(text)
    lexer = impl.LaTeXLexer(antlr4.InputStream(text))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    parser = impl.LaTeXParser(antlr4.CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    return impl.convert_relation(parser.math().relation())


def _latex2sympy(text: str):
    _guard_latex_parsers()
    from latex2sympy2_extended.latex2sympy2 import ConversionConfig, latex2sympy

    # No math-verify normalisation; no mixed fractions or lower-casing (closer to the toolkit's latex2sympy2 1.9).
    config = ConversionConfig(interpret_as_mixed_fractions=False, lowercase_symbols=False)
    return latex2sympy(text, normalization_config=None, conversion_config=config)


def _parse_symbolic(text: str):
    """First parser that succeeds (each tried with ``\\\\\\\\`` -> ``\\\\`` first, then on the raw text), else the text.

    The toolkit's chain is parse_latex, parse_expr, latex2sympy; :func:`_parse_python` stands in for parse_expr.
    A parser's result is never a Python string (a string result would count as a failure)."""
    for parse in (_sympy_parse_latex, _parse_python, _latex2sympy):
        for candidate in (text.replace("\\\\", "\\"), text):
            try:
                value = parse(candidate)
            except Exception:
                continue
            if not isinstance(value, str):
                return value
    return text


def _symbolic_equal(a: str, b: str) -> bool:
    """The toolkit's ``symbolic_equal``. A side no parser understood stays a string; the toolkit would then hand it
    to sympify (``a.equals(b)``, ``N(b)``: ``eval``), so with a string side only the string forms are compared.
    No sympy call below ever receives a Python string. (sympy still sympifies text of its own making: inside
    ``equals``/``simplify``, ``nsimplify`` reads the formula ``mpmath.identify`` writes for a float, made of
    digits, operators and constant names, never of answer text.)"""
    from sympy import N, simplify

    a, b = _parse_symbolic(a), _parse_symbolic(b)
    if isinstance(a, str) or isinstance(b, str):
        return str(a) == str(b)
    try:
        if str(a) == str(b) or a == b:
            return True
    except Exception:
        pass
    try:
        if a.equals(b) or simplify(a - b) == 0:
            return True
    except Exception:
        pass
    try:
        if abs(a.lhs - a.rhs).equals(abs(b.lhs - b.rhs)):
            return True
    except Exception:
        pass
    try:
        if _isclose(float(N(a)), float(N(b))):
            return True
    except Exception:
        pass
    try:
        if a.shape == b.shape:
            if a.applyfunc(lambda x: round(x, 3)).equals(b.applyfunc(lambda x: round(x, 3))):
                return True
    except Exception:
        pass
    return False


WORKER_MEMORY_BYTES = 4 << 30  # address-space cap of the worker process
WORKER_START_TIMEOUT = 120.0  # seconds allowed for the worker to import sympy and warm up
# Bounds on grading one answer. A completion (plus its raw gold) longer than INPROCESS_MAX_CHARS is graded whole
# (cleaning, extraction, every rule) in the worker under the timeout; the cheap in-process path only ever sees
# shorter text, on which every step is linear. Text longer than MAX_TEXT_CHARS (some 50 times the longest
# 2048-token completion) is not graded at all: wrong, with the reason.
INPROCESS_MAX_CHARS = 20_000
MAX_TEXT_CHARS = 400_000


def _worker_reply(request: dict) -> dict:
    """The worker's answer to one request: ``{"pred", "gold"}`` -> ``{"ok"}`` (the full ``math_equal``), or
    ``{"rules", "gold", "completion"}`` (``gold``: the raw gold field) -> ``{"pred", "gold", "ok"}`` (the whole
    grading of one answer)."""
    if "completion" in request:
        pred, _, gold = _prepare_from_field(request["rules"], request["gold"], request["completion"])
        return {"pred": pred, "gold": gold, "ok": bool(_math_equal(pred, gold, _symbolic_equal))}
    return {"ok": bool(_math_equal(request["pred"], request["gold"], _symbolic_equal))}


def _serve_symbolic() -> None:
    """The worker's main loop: one JSON request per stdin line (see :func:`_worker_reply`), one JSON reply, or
    ``{"error": str}``, per line on the original stdout (sys.stdout itself goes to /dev/null, since antlr prints
    version notices there). Starts by capping its memory and warming up the parsers, then announces
    ``{"ready": true}``, so that no request's timeout pays for imports."""
    import sys
    import warnings

    protocol = os.fdopen(os.dup(1), "w", encoding="ascii")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    sys.stdout = open(os.devnull, "w")
    warnings.simplefilter("ignore")
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):  # pragma: no cover - platform without rlimits
        pass
    _symbolic_equal("\\frac{1}{2}", "0.5")
    _symbolic_equal("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "x^2")
    _symbolic_equal("2*x**2", "x**2+x**2")
    protocol.write('{"ready": true}\n')
    protocol.flush()
    for line in sys.stdin:
        try:
            reply = _worker_reply(json.loads(line))
        except Exception as e:  # noqa: BLE001 - MemoryError and RecursionError included: a wrong answer
            reply = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()


class _SymbolicWorker:
    """A long-lived worker process for the symbolic step and for over-long answers (started on first use, reused
    across calls, killed and restarted after a timeout or a crash). A plain subprocess running
    :func:`_serve_symbolic`, talking JSON lines over pipes: no fork of the (possibly multi-threaded, torch-loaded)
    parent, no pickling, no main-module re-import."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._owner = os.getpid()  # a forked child must not talk to its parent's worker
        self._buffer = b""
        self._lock = threading.Lock()

    def _start(self) -> None:
        import sys

        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self._buffer = b""
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from lightreasoner.grading import _serve_symbolic; _serve_symbolic()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        try:
            ready = self._read_line(WORKER_START_TIMEOUT)
        except (TimeoutError, EOFError, OSError):
            self._kill()
            raise RuntimeError("the symbolic worker did not start (see its error output above)") from None
        if json.loads(ready) != {"ready": True}:
            self._kill()
            raise RuntimeError(f"the symbolic worker said {ready!r} instead of ready")

    def _read_line(self, timeout: float) -> bytes:
        import select
        import time

        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        chunks = [self._buffer]
        while b"\n" not in chunks[-1]:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                self._buffer = b"".join(chunks)
                raise TimeoutError
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise EOFError
            chunks.append(chunk)
        line, _, self._buffer = b"".join(chunks).partition(b"\n")
        return line

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for pipe in (self._proc.stdin, self._proc.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass
            self._proc = None

    def _ask(self, request: dict, timeout: float, task: str) -> tuple[dict | None, str | None]:
        """(reply, None) or (None, reason) for one request; the timeout starts when the request has been sent to
        the idle, warmed-up worker. A timeout or a dead worker gives the reason (``task`` names the work)."""
        with self._lock:
            if self._owner != os.getpid():
                self._proc, self._owner = None, os.getpid()
            try:
                if self._proc is None or self._proc.poll() is not None:
                    self._kill()
                    self._start()
                self._proc.stdin.write(json.dumps(request).encode("ascii") + b"\n")
                self._proc.stdin.flush()
                reply = json.loads(self._read_line(timeout))
            except TimeoutError:
                logger.debug("%s timed out after %gs; restarting the worker", task, timeout)
                self._kill()
                return None, f"timeout: {task} took more than {timeout:g}s"
            except (EOFError, OSError, ValueError) as e:
                logger.warning("the symbolic worker died (%s); it will be restarted", type(e).__name__)
                self._kill()
                return None, f"the symbolic worker died ({type(e).__name__})"
            except RuntimeError as e:
                logger.warning("%s", e)
                return None, str(e)
        if "error" in reply:
            return None, f"{task} failed: {reply['error']}"
        return reply, None

    def compare(self, pred: str, gold: str, timeout: float) -> tuple[bool, str | None]:
        """(verdict, error) of the full ``math_equal`` in the worker; a timeout is a wrong answer with the
        reason."""
        reply, error = self._ask({"pred": pred, "gold": gold}, timeout, "the symbolic comparison")
        return (False, error) if reply is None else (bool(reply["ok"]), None)

    def grade(self, rules: str, gold_field: str, completion: str, timeout: float) -> GradeResult:
        """The whole grading of one answer in the worker (``gold_field``: the raw gold as text); a timeout is a
        wrong answer with the reason."""
        request = {"rules": rules, "gold": gold_field, "completion": completion}
        reply, error = self._ask(request, timeout, f"grading this answer ({len(completion)} characters)")
        if reply is None:
            return GradeResult(None, "", False, error)
        return GradeResult(reply["pred"], reply["gold"], bool(reply["ok"]), None)

    def close(self) -> None:
        with self._lock:
            if self._owner == os.getpid():
                self._kill()


_WORKER = _SymbolicWorker()
atexit.register(_WORKER.close)


def _cheap_verdict(pred: str | None, gold: str | None) -> bool | None:
    """The verdict when no symbolic step is needed, else ``None``."""
    try:
        return _math_equal(pred, gold, _defer_symbolic)
    except _NeedsSymbolic:
        return None


def _too_long(what: str, text: str) -> str | None:
    """The reason ``text`` is not graded (longer than :data:`MAX_TEXT_CHARS`), else ``None``."""
    if len(text) > MAX_TEXT_CHARS:
        return f"{what} too long: {len(text)} characters > {MAX_TEXT_CHARS} (not graded)"
    return None


def _judge(pred: str | None, gold: str | None, timeout: float) -> tuple[bool, str | None]:
    """(verdict, error): the cheap rules here, the whole comparison in the worker when sympy is needed or the
    texts are long (over-long ones are not compared)."""
    if pred is not None and gold is not None:
        reason = _too_long("answer", pred) or _too_long("gold", gold)
        if reason:
            return False, reason
        if len(pred) + len(gold) > INPROCESS_MAX_CHARS:
            return _WORKER.compare(pred, gold, timeout)
    try:
        verdict = _cheap_verdict(pred, gold)
    except Exception as e:  # noqa: BLE001 - e.g. RecursionError on absurd input: wrong, with the reason
        return False, f"{type(e).__name__}: {e}"
    if verdict is not None:
        return verdict, None
    return _WORKER.compare(pred, gold, timeout)


def _check_timeout(timeout: float) -> None:
    """Refuse a timeout that is not a finite number > 0 (NaN or infinity would make every wait misbehave)."""
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a finite number > 0, got {timeout}")


def math_equal(pred: str | None, gold: str | None, timeout: float = 3.0) -> bool:
    """The toolkit's ``math_equal``; the symbolic step runs in the worker and counts as wrong after ``timeout`` s."""
    _check_timeout(timeout)
    return _judge(pred, gold, timeout)[0]


# ---------------------------------------------------------------------------------------------------------------
# Grading
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class GradeResult:
    pred: str | None
    gold: str
    correct: bool
    error: str | None = None


def _is_letters_only(text: str) -> bool:
    return all(c in LETTERS for c in text)


def _prepare_from_field(rules: str, field: Any, completion: str) -> tuple[str | None, str, str]:
    """(prediction after the MC repair, first-pass gold, compared gold) given the raw gold."""
    first, gold = _gold_passes_from_field(rules, field)
    code = clean_completion(completion)
    pred = None if not code or code == "error" else strip_string(extract_answer(code, rules),
                                                                 skip_unit=rules in SKIP_UNIT)
    # The toolkit's multiple-choice repair (it looks at the stored first-pass gold).
    if first in LETTERS and pred not in LETTERS:
        pred = choice_answer_clean(code)
    elif _is_letters_only(first) and pred is not None and not _is_letters_only(pred):
        pred = "".join(c for c in pred if c in LETTERS)
    return pred, first, gold


def _gold_field_text(rules: str, field: Any) -> str | None:
    """The raw gold as text for the worker: the field itself, or for svamp/mawps (numbers, which the first
    normalisation turns into text first anyway) its ``str``; ``None`` for anything else (it fails at once here)."""
    if isinstance(field, str):
        return field
    return str(field) if rules in ("svamp", "mawps") else None


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
            return _WORKER.grade(rules, wire, completion, timeout)
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


# ---------------------------------------------------------------------------------------------------------------
# CLI: lightreasoner grade
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GradeConfig:
    """Grade completions as the Qwen2.5-Math toolkit does (prompt type qwen25-math-cot).

    Reads JSONL lines {"example": <benchmark row>, "completion": "<model text>"} and writes the same lines, in the
    same order, with "pred", "gold" and "correct" added (and "error" where a line could not be graded)."""

    benchmark: str = option(help="benchmark whose rules apply", choices=ALL_BENCHMARKS)
    input: str = option(help="JSONL file of {\"example\": row, \"completion\": text} lines")
    output: str = option(help="JSONL file to write (replaced atomically)")
    timeout: float = option(3.0, "seconds allowed for one symbolic comparison (the toolkit's 3)")

    def validate(self) -> list[str]:
        problems = []
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            problems.append(f"--timeout must be a finite number > 0, got {self.timeout}")
        if Path(self.input).resolve() == Path(self.output).resolve():
            problems.append("--output must differ from --input")
        return problems


def _check_gold_field(rules: str, example: dict) -> None:
    """Raise unless the row has a gold field these rules can read (cheap: nothing is normalised here)."""
    field = _gold_field(rules, example)
    if _gold_field_text(rules, field) is None:
        raise TypeError(f"the gold field is a {type(field).__name__}, not text")


def _read_grade_input(path: str, rules: str) -> list[dict]:
    if not Path(path).is_file():
        raise InputError(f"--input: no such file {path!r}")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}); fix or remove "
                                 f"the line") from None
            if not (isinstance(row, dict) and isinstance(row.get("example"), dict)
                    and isinstance(row.get("completion"), str)):
                raise InputError(f"{path}:{n}: expected {{\"example\": {{...}}, \"completion\": \"...\"}}; fix or "
                                 f"remove the line")
            try:
                _check_gold_field(rules, row["example"])
            except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
                raise InputError(f"{path}:{n}: the example has no usable gold for this benchmark "
                                 f"({type(e).__name__}: {e}); is --benchmark right?") from None
            rows.append(row)
    return rows


def grade_main(cfg: GradeConfig) -> int:
    """``lightreasoner grade``: grade a JSONL file of (example, completion) pairs; prints the accuracy."""
    rules = _rules_for(cfg.benchmark)
    rows = _read_grade_input(cfg.input, rules)
    results = grade_many(cfg.benchmark, [r["example"] for r in rows], [r["completion"] for r in rows],
                         timeout=cfg.timeout, progress=True)
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row, res in zip(rows, results):
                record = {**row, "pred": res.pred, "gold": res.gold, "correct": bool(res.correct)}
                if res.error is not None:
                    record["error"] = res.error
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    n = len(results)
    n_right = sum(r.correct for r in results)
    n_failed = sum(r.error is not None for r in results)
    acc = 100.0 * n_right / n if n else 0.0
    print(f"{cfg.benchmark}: accuracy {acc:.1f} ({n_right}/{n}); could not be graded: {n_failed}; "
          f"wrote {out}")
    return 0


__all__ = [
    "BENCHMARKS", "ALL_BENCHMARKS", "FEW_SHOT", "STOP_STRINGS", "GradeResult", "GradeConfig",
    "build_qwen25_math_prompt", "parse_question", "parse_gold", "extract_answer", "extract_prediction",
    "strip_string", "choice_answer_clean", "clean_completion", "math_equal", "grade", "grade_many", "grade_main",
]
