"""The Qwen2.5-Math toolkit's evaluation files: our records written in its per-sample and metrics formats, and its
per-sample lines read back (``lightreasoner grade``), so a toolkit user can diff a run against theirs.

The toolkit (QwenLM/Qwen2.5-Math, ``evaluation/math_eval.py`` and ``evaluate.py``) writes, per benchmark,
``OUTPUT/<data_name>/<split>_<prompt_type>_<num_test_sample>_seed<seed>_t<temperature>_s<start>_e<end>.jsonl``
(``num_test_sample`` -1: all problems; ``sh/eval.sh`` passes ``--temperature 0``, read as the float ``0.0``),
one line per problem in ``idx`` order::

    idx, question, gt_cot, gt, <level, type, unit, ..., answer: copied from the row where it has them>,
    code (the completions), pred (their answers), report (None each: no code ran), score (their verdicts)

``gt`` is the gold as compared (after its second parsing pass), ``gt_cot`` the worked solution (``"None"`` where
the dataset has none), ``code`` each completion stripped and cut at the stop strings. Beside it,
``..._<prompt_type>_metrics.json`` (indent 4): ``num_samples``, ``num_scores``, ``timeout_samples``,
``empty_samples`` (no answer extracted), ``acc`` (percent, one decimal), ``type_acc`` (per MATH ``type``, when
the rows have one), ``time_use_in_second`` and ``time_use_in_minite`` (``M:SS``; the toolkit's spelling).

``lightreasoner eval`` writes these under ``OUTPUT/toolkit/`` (:func:`write_toolkit_files`); its prompt
``qwen25-math`` is the toolkit's ``qwen25-math-cot`` (``--prompt chat`` has no toolkit name and keeps ours).
With ``--grader math-verify``, ``pred`` and ``score`` are Math-Verify's and ``gt`` stays the toolkit's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from .benchmarks import RULES
from .grading import StoredGold, clean_completion, parse_gold, parse_question
from .utils import InputError, atomic_write, write_jsonl

TOOLKIT_FOLDER = "toolkit"  # under an eval output folder
PROMPT_TYPES = {"qwen25-math": "qwen25-math-cot", "chat": "chat"}  # our --prompt -> the toolkit's prompt_type
# The row fields the toolkit copies into each sample, in its order (math_eval.py).
COPIED_FIELDS = ("level", "type", "unit", "solution_type", "choices", "solution", "ques_type", "ans_type",
                 "answer_type", "dataset", "subfield", "filed", "theorem", "answer")
CHOICE_LABELS = "ABCD"


# ---------------------------------------------------------------------------------------------------------------
# Writing


def file_names(prompt: str, limit: int | None, seed: int) -> tuple[str, str]:
    """(per-sample JSONL, metrics JSON) names the toolkit gives a greedy run of ``prompt`` on the first ``limit``
    problems (``None``: all) with ``seed``."""
    prompt_type = PROMPT_TYPES.get(prompt, prompt)
    stem = f"test_{prompt_type}_{-1 if limit is None else limit}_seed{seed}_t0.0_s0_e-1"
    return f"{stem}.jsonl", f"{stem}_{prompt_type}_metrics.json"


def gt_cot(benchmark: str, example: Mapping[str, Any]) -> str:
    """The toolkit's ``gt_cot``: the worked solution of the row (``"None"`` for datasets without one)."""
    rules = RULES[benchmark]
    cot: Any = None
    if rules in ("math", "minerva_math"):
        cot = example.get("solution")
    elif rules == "gsm8k":
        cot = str(example["answer"]).split("####")[0]
    elif rules == "svamp":
        cot = example.get("Equation")
    elif rules == "asdiv":
        cot = example.get("formula")
    return str(cot).strip()


def _copied(benchmark: str, example: Mapping[str, Any]) -> dict[str, Any]:
    """The row fields the toolkit keeps; mmlu_stem's choices as its question reader leaves them, ``(A) ...``."""
    out = {k: example[k] for k in COPIED_FIELDS if k in example}
    if RULES[benchmark] == "mmlu_stem" and isinstance(out.get("choices"), list):
        out["choices"] = [f"({label}) {str(c).strip()}" for label, c in zip(CHOICE_LABELS, out["choices"])]
    return out


def toolkit_sample(benchmark: str, example: Mapping[str, Any], record: Mapping[str, Any]) -> dict[str, Any]:
    """One problem's line of the toolkit's per-sample file, from its row and our record."""
    row = dict(example)  # the readers never modify a row; a copy keeps it so
    return {"idx": row.get("idx"), "question": parse_question(benchmark, row), "gt_cot": gt_cot(benchmark, row),
            "gt": parse_gold(benchmark, row), **_copied(benchmark, row),
            "code": [clean_completion(record["completion"])], "pred": [record["pred"]], "report": [None],
            "score": [bool(record["correct"])]}


def is_timeout(record: Mapping[str, Any]) -> bool:
    """Whether a record's verdict is a timeout (the grading worker's reason starts with ``timeout``)."""
    return str(record.get("error") or "").startswith("timeout")


def minutes(seconds: float) -> str:
    """The toolkit's ``time_use_in_minite``: ``M:SS``."""
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def toolkit_metrics(samples: Sequence[Mapping[str, Any]], timeouts: int, seconds: float) -> dict[str, Any]:
    """The toolkit's metrics of its per-sample lines (accuracy over each line's first verdict, as its ``acc``)."""
    n = len(samples)
    first = [bool(s["score"][0]) for s in samples]
    metrics: dict[str, Any] = {
        "num_samples": n, "num_scores": sum(len(s["score"]) for s in samples), "timeout_samples": timeouts,
        "empty_samples": sum(not s["pred"][-1] for s in samples),
        "acc": round(100.0 * sum(first) / n, 1) if n else None}
    if samples and "type" in samples[0]:
        by_type: dict[str, list[bool]] = {}
        for s in samples:
            by_type.setdefault(str(s.get("type")), []).append(bool(s["score"][-1]))
        metrics["type_acc"] = {t: round(100.0 * sum(v) / len(v), 1) for t, v in sorted(by_type.items())}
    metrics["time_use_in_second"] = seconds
    metrics["time_use_in_minite"] = minutes(seconds)
    return metrics


def write_toolkit_files(folder: str | Path, benchmark: str,
                        pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]], *, prompt: str,
                        limit: int | None, seed: int, seconds: float) -> tuple[Path, Path]:
    """Write ``folder/<benchmark>/`` 's per-sample JSONL and metrics JSON from ``(row, record)`` pairs in the
    benchmark's order; returns their paths."""
    samples = [toolkit_sample(benchmark, ex, rec) for ex, rec in pairs]
    names = file_names(prompt, limit, seed)
    out = Path(folder) / benchmark
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / names[0], samples)
    metrics = toolkit_metrics(samples, sum(is_timeout(r) for _, r in pairs), seconds)
    atomic_write(out / names[1], json.dumps(metrics, indent=4))
    return out / names[0], out / names[1]


# ---------------------------------------------------------------------------------------------------------------
# Reading the toolkit's per-sample lines


def is_toolkit_sample(row: Any) -> bool:
    """Whether a JSON line looks like the toolkit's per-sample output (``idx``, ``gt`` and a ``code`` list)."""
    return isinstance(row, dict) and {"idx", "gt", "code"} <= row.keys() and "completion" not in row


def stored_gold(row: Mapping[str, Any], where: str) -> StoredGold:
    """The gold of a toolkit line, checked (``where``: ``file:line`` for the error)."""
    gt, cot, code = row.get("gt"), row.get("gt_cot"), row.get("code")
    if not isinstance(gt, str):
        raise InputError(f"{where}: the toolkit line's \"gt\" is {type(gt).__name__}, not text; fix or remove "
                         f"the line")
    if cot is not None and not isinstance(cot, str):
        raise InputError(f"{where}: the toolkit line's \"gt_cot\" is {type(cot).__name__}, not text; fix or "
                         f"remove the line")
    if not (isinstance(code, list) and code and all(isinstance(c, str) for c in code)):
        raise InputError(f"{where}: the toolkit line's \"code\" must be a non-empty list of completions (text); "
                         f"fix or remove the line")
    return StoredGold(gt, cot)


def regraded(row: Mapping[str, Any], results: Sequence[Any]) -> dict[str, Any]:
    """A toolkit line with ``pred`` and ``score`` replaced by ``results`` (one per completion in ``code``), and
    ``error`` (one per completion) where any could not be graded."""
    out = {**row, "pred": [r.pred for r in results], "score": [bool(r.correct) for r in results]}
    if any(r.error is not None for r in results):
        out["error"] = [r.error for r in results]
    return out


def agreement(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """(verdicts equal, verdicts compared) between the scores a toolkit file held and the regraded ones."""
    pairs = [(a, b) for x, y in zip(before, after) if isinstance(x.get("score"), list)
             for a, b in zip(x["score"], y["score"])]
    return sum(bool(a) == bool(b) for a, b in pairs), len(pairs)


__all__ = ["TOOLKIT_FOLDER", "PROMPT_TYPES", "file_names", "gt_cot", "toolkit_sample", "toolkit_metrics",
           "write_toolkit_files", "is_toolkit_sample", "stored_gold", "regraded", "agreement"]
