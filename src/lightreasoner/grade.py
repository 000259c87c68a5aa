"""``lightreasoner grade``: grade a JSONL file of (example, completion) pairs as the Qwen2.5-Math toolkit does.

The stage around :func:`lightreasoner.grading.grade_many` (the rules are the grading package's): reads the lines,
checks each one before any grading starts, writes them back in order with the verdicts, prints the accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .benchmarks import ALL_BENCHMARKS
from .config import option
from .grading import grade_many
from .grading.extract import _rules_for, check_gold_field
from .utils import InputError, iter_jsonl, write_jsonl, writes_output


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


def read_grade_input(path: str, rules: str) -> list[dict]:
    """The lines of ``--input``, each checked (UTF-8, JSON, the two fields, a gold these rules read) before
    grading."""
    if not Path(path).is_file():
        raise InputError(f"--input: no such file {path!r}")
    rows = []
    for n, row in iter_jsonl(path, skippable=False):
        if not (isinstance(row, dict) and isinstance(row.get("example"), dict)
                and isinstance(row.get("completion"), str)):
            raise InputError(f"{path}:{n}: expected {{\"example\": {{...}}, \"completion\": \"...\"}}; fix or "
                             f"remove the line")
        try:
            check_gold_field(rules, row["example"])
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
            raise InputError(f"{path}:{n}: the example has no usable gold for this benchmark "
                             f"({type(e).__name__}: {e}); is --benchmark right?") from None
        rows.append(row)
    return rows


@writes_output("grade", kind="file")
def grade_main(cfg: GradeConfig) -> int:
    """``lightreasoner grade``: grade a JSONL file of (example, completion) pairs; prints the accuracy."""
    rows = read_grade_input(cfg.input, _rules_for(cfg.benchmark))
    results = grade_many(cfg.benchmark, [r["example"] for r in rows], [r["completion"] for r in rows],
                         timeout=cfg.timeout, progress=True)
    records = []
    for row, res in zip(rows, results):
        record = {**row, "pred": res.pred, "gold": res.gold, "correct": bool(res.correct)}
        if res.error is not None:
            record["error"] = res.error
        records.append(record)
    out = Path(cfg.output)
    write_jsonl(out, records)
    n = len(results)
    n_right = sum(r.correct for r in results)
    n_failed = sum(r.error is not None for r in results)
    acc = 100.0 * n_right / n if n else 0.0
    print(f"{cfg.benchmark}: accuracy {acc:.1f} ({n_right}/{n}); could not be graded: {n_failed}; "
          f"wrote {out}")
    return 0
