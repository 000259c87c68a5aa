"""``lightreasoner grade``: grade a JSONL file of completions, as the Qwen2.5-Math toolkit does or as Math-Verify does.

The stage around :func:`lightreasoner.grading.grade_many` (the rules are the grading package's): reads the lines,
checks each one before any grading starts, writes them back in order with the verdicts, prints the accuracy.

Two input formats, told apart by their fields (every line must be of the first line's format):

- ours: ``{"example": <benchmark row>, "completion": "<model text>"}``; written back with ``pred``, ``gold``,
  ``correct`` (and ``error`` where a line could not be graded);
- the toolkit's own per-sample output (``idx``, ``gt``, ``gt_cot``, ``code``: a list of completions, ...;
  :mod:`.toolkit_format`): each completion in ``code`` is graded against the stored ``gt``, and the line is
  written back in the toolkit's format with ``pred`` and ``score`` replaced (``error`` added where one could not be
  graded); the verdicts are compared with the ``score`` the file held.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .benchmarks import ALL_BENCHMARKS
from .config import option
from .grading import DEFAULT_TIMEOUT, GRADERS, grade_many
from .grading.extract import _rules_for, check_gold_field
from .toolkit_format import agreement, is_toolkit_sample, regraded, stored_gold
from .utils import InputError, iter_jsonl, write_jsonl, writes_output

OURS, TOOLKIT = "ours", "toolkit"


@dataclass(frozen=True)
class GradeConfig:
    """Grade completions as the Qwen2.5-Math toolkit does (prompt type qwen25-math-cot), or as Math-Verify does.

    Reads JSONL lines {"example": <benchmark row>, "completion": "<model text>"} and writes the same lines, in the
    same order, with "pred", "gold" and "correct" added (and "error" where a line could not be graded). Also reads
    the toolkit's own per-sample output (idx, gt, code, ...) and writes it back with "pred" and "score" replaced."""

    benchmark: str = option(help="benchmark whose rules apply", choices=ALL_BENCHMARKS)
    input: str = option(help="JSONL file of {\"example\": row, \"completion\": text} lines, or the Qwen2.5-Math "
                             "toolkit's per-sample output")
    output: str = option(help="JSONL file to write (replaced atomically)")
    grade_timeout: float = option(DEFAULT_TIMEOUT, "seconds allowed for one symbolic comparison (the toolkit's 3; "
                                       "math-verify: per answer)")
    grader: str = option("qwen", "qwen: the Qwen2.5-Math toolkit's verdicts; math-verify: Hugging Face "
                                 "Math-Verify's, as lighteval and open-r1 report them", choices=GRADERS)

    def validate(self) -> list[str]:
        problems = []
        if not (math.isfinite(self.grade_timeout) and self.grade_timeout > 0):
            problems.append(f"--grade-timeout must be a finite number > 0, got {self.grade_timeout}")
        if Path(self.input).resolve() == Path(self.output).resolve():
            problems.append("--output must differ from --input")
        return problems


def _check_ours(row: object, where: str, rules: str) -> None:
    """Raise unless ``row`` is one of our lines with a gold these rules read."""
    if not (isinstance(row, dict) and isinstance(row.get("example"), dict)
            and isinstance(row.get("completion"), str)):
        raise InputError(f"{where}: expected {{\"example\": {{...}}, \"completion\": \"...\"}} or a line of the "
                         f"Qwen2.5-Math toolkit's per-sample output (idx, gt, code); fix or remove the line")
    try:
        check_gold_field(rules, row["example"])
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
        raise InputError(f"{where}: the example has no usable gold for this benchmark "
                         f"({type(e).__name__}: {e}); is --benchmark right?") from None


def read_grade_input(path: str, rules: str) -> tuple[str, list[dict]]:
    """The format of ``--input`` (``ours`` or ``toolkit``, from its first line) and its lines, each checked
    (UTF-8, JSON, the format's fields, a gold these rules read) before grading."""
    if not Path(path).is_file():
        raise InputError(f"--input: no such file {path!r}")
    rows: list[dict] = []
    kind = None
    for n, row in iter_jsonl(path, skippable=False):
        here = TOOLKIT if is_toolkit_sample(row) else OURS
        kind = kind or here
        if here != kind:
            raise InputError(f"{path}:{n}: a line of the {here} format in a file of the {kind} format (its first "
                             f"line's); grade one format per file")
        if kind == TOOLKIT:
            stored_gold(row, f"{path}:{n}")
        else:
            _check_ours(row, f"{path}:{n}", rules)
        rows.append(row)
    return kind or OURS, rows


def _grade_ours(cfg: GradeConfig, rows: list[dict]) -> tuple[list[dict], int, int, int]:
    """(records, right, graded, not gradable) of our lines."""
    results = grade_many(cfg.benchmark, [r["example"] for r in rows], [r["completion"] for r in rows],
                         timeout=cfg.grade_timeout, progress=True, grader=cfg.grader)
    records = []
    for row, res in zip(rows, results):
        record = {**row, "pred": res.pred, "gold": res.gold, "correct": bool(res.correct)}
        if res.error is not None:
            record["error"] = res.error
        records.append(record)
    return records, sum(r.correct for r in results), len(results), sum(r.error is not None for r in results)


def _grade_toolkit(cfg: GradeConfig, rows: list[dict]) -> tuple[list[dict], int, int, int]:
    """(lines, right, graded, not gradable) of the toolkit's lines: every completion of each line is graded;
    the accuracy counts each line's first, as the toolkit's ``acc`` does."""
    golds = [stored_gold(r, cfg.input) for r in rows]
    flat = [(i, c) for i, r in enumerate(rows) for c in r["code"]]
    results = grade_many(cfg.benchmark, [golds[i] for i, _ in flat], [c for _, c in flat],
                         timeout=cfg.grade_timeout, progress=True, grader=cfg.grader)
    per_row: list[list] = [[] for _ in rows]
    for (i, _), res in zip(flat, results):
        per_row[i].append(res)
    lines = [regraded(r, res) for r, res in zip(rows, per_row)]
    same, compared = agreement(rows, lines)
    if compared:
        print(f"{cfg.benchmark}: {same} of {compared} verdicts equal the scores the file held")
    return (lines, sum(bool(res[0].correct) for res in per_row), len(rows),
            sum(r.error is not None for r in results))


@writes_output("grade", kind="file")
def grade_main(cfg: GradeConfig) -> int:
    """``lightreasoner grade``: grade a JSONL file of completions (either format); prints the accuracy."""
    kind, rows = read_grade_input(cfg.input, _rules_for(cfg.benchmark))
    records, n_right, n, n_failed = (_grade_toolkit if kind == TOOLKIT else _grade_ours)(cfg, rows)
    out = Path(cfg.output)
    write_jsonl(out, records)
    acc = 100.0 * n_right / n if n else 0.0
    print(f"{cfg.benchmark} ({cfg.grader} grader, {kind} format): accuracy {acc:.1f} ({n_right}/{n}); could not "
          f"be graded: {n_failed}; wrote {out}")
    return 0
