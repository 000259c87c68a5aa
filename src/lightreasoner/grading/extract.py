"""Questions, golds and answer extraction, as the toolkit does them (sections 4-6 of ``/work/shared/EVAL_SPEC.md``).

The benchmark table is :mod:`lightreasoner.benchmarks`; the prompt (section 3) and stop strings are in
:mod:`lightreasoner.prompts`."""

from __future__ import annotations

import re
from typing import Any

from ..benchmarks import ALL_BENCHMARKS, RULES
from ..prompts import STOP_STRINGS
from .normalise import _PARENTHESISED, _sub_bounded, strip_string

# Which benchmark follows which rules is the benchmark table's (lightreasoner.benchmarks); these are the rules'.
MULTIPLE_CHOICE = ("mmlu_stem", "sat_math", "aqua", "gaokao2023")  # extract_answer returns the choice letter
SKIP_UNIT = ("carp_en", "minerva_math")  # no unit-word removal for these
LETTERS = ("A", "B", "C", "D", "E")


def _rules_for(benchmark: str) -> str:
    try:
        return RULES[benchmark]
    except KeyError:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose from {', '.join(ALL_BENCHMARKS)}") from None


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
# Prediction after the multiple-choice repair
# ---------------------------------------------------------------------------------------------------------------

def _is_letters_only(text: str) -> bool:
    return all(c in LETTERS for c in text)


def _prepare_from_field(rules: str, field: Any, completion: str) -> tuple[str | None, str, str]:
    """(prediction after the MC repair, first-pass gold, compared gold) given the raw gold."""
    first, gold = _gold_passes_from_field(rules, field)
    return _prediction(rules, first, completion), first, gold


def _prediction(rules: str, first: str, completion: str) -> str | None:
    """The prediction after the toolkit's multiple-choice repair, which looks at the first-pass gold ``first``."""
    code = clean_completion(completion)
    pred = None if not code or code == "error" else strip_string(extract_answer(code, rules),
                                                                 skip_unit=rules in SKIP_UNIT)
    # The toolkit's multiple-choice repair (it looks at the stored first-pass gold).
    if first in LETTERS and pred not in LETTERS:
        pred = choice_answer_clean(code)
    elif _is_letters_only(first) and pred is not None and not _is_letters_only(pred):
        pred = "".join(c for c in pred if c in LETTERS)
    return pred


def _gold_field_text(rules: str, field: Any) -> str | None:
    """The raw gold as text for the worker: the field itself, or for svamp/mawps (numbers, which the first
    normalisation turns into text first anyway) its ``str``; ``None`` for anything else (it fails at once here)."""
    if isinstance(field, str):
        return field
    return str(field) if rules in ("svamp", "mawps") else None


def check_gold_field(rules: str, example: dict) -> None:
    """Raise unless the row has a gold field these rules can read (cheap: nothing is normalised here)."""
    field = _gold_field(rules, example)
    if _gold_field_text(rules, field) is None:
        raise TypeError(f"the gold field is a {type(field).__name__}, not text")
