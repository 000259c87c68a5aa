"""`--grader qwen|math-verify` on `eval` and `grade`: Math-Verify's verdicts on known completions (where it and the
toolkit's rules disagree too), the grader named in the summary and metadata, a changed grader a changed setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightreasoner import cli, grading, layout
from lightreasoner import evaluate as E
from lightreasoner import evaluation as EV
from lightreasoner import generation as G
from lightreasoner.config import ConfigError, resolve
from lightreasoner.grade import GradeConfig, grade_main
from lightreasoner.utils import InputError

FAST = {"max_new_tokens": 12, "batch_size": 4, "dtype": "float32", "device": "cpu"}
GRADING_LIBRARIES = ("sympy", "latex2sympy2_extended", "antlr4-python3-runtime", "math-verify")


def gsm8k(gold: str) -> dict:
    return {"question": f"What is the answer, {gold}?", "answer": f"Work.\n#### {gold}"}


def math_row(boxed: str) -> dict:
    return {"problem": "Compute it.", "solution": f"Hence $\\boxed{{{boxed}}}$."}


MMLU_ROW = {"question": "Pick one.", "choices": ["1", "2", "3", "4"], "answer": 2}
# (benchmark, row, completion, the toolkit's verdict, Math-Verify's verdict)
CASES = [
    ("gsm8k", gsm8k("7"), "So he has \\boxed{7} apples.", True, True),
    ("gsm8k", gsm8k("7"), "So he has \\boxed{8} apples.", False, False),
    ("math", math_row("\\frac{1}{2}"), "The value is $\\boxed{0.5}$.", True, True),
    ("math", math_row("x+1"), "We get \\boxed{1+x}.", True, True),
    ("mmlu_stem", MMLU_ROW, "So the answer is \\boxed{C}.", True, True),
    # Where they disagree. The toolkit's numbers are equal within a relative 1e-4; Math-Verify rounds to 6 decimals.
    ("math", math_row("3"), "So it is \\boxed{3.0001}.", True, False),
    # The toolkit also takes a number as a percentage of the gold (50 -> 0.5); Math-Verify does not.
    ("gsm8k", gsm8k("50"), "Half of it: \\boxed{0.5}", True, False),
    # The toolkit reads a letter in parentheses; Math-Verify a letter after "answer" only bare (or in LaTeX).
    ("mmlu_stem", MMLU_ROW, "The answer is (C).", True, False),
    # A gold "x \\in [1,2]": the toolkit compares it with "[1,2]" as text, Math-Verify reads it as the interval.
    ("math", math_row("x \\in [1,2]"), "So $x$ lies in \\boxed{[1,2]}.", False, True),
]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("bench,row,completion,qwen,math_verify", CASES)
def test_both_graders_on_known_completions(bench, row, completion, qwen, math_verify):
    q = grading.grade(bench, dict(row), completion)
    mv = grading.grade(bench, dict(row), completion, grader="math-verify")
    assert (q.correct, q.error) == (qwen, None)
    assert (mv.correct, mv.error) == (math_verify, None)
    assert mv.gold and (mv.pred is None or isinstance(mv.pred, str))  # what Math-Verify extracted, as text
    if mv.correct:
        assert mv.pred


def test_math_verify_against_a_toolkit_files_stored_gold():
    solution = "Hence $\\boxed{\\frac{3}{4}}$."
    stored = grading.StoredGold(gt=grading.parse_gold("math", {"solution": solution}), gt_cot=solution)
    assert grading.grade("math", stored, "It is $\\boxed{0.75}$", grader="math-verify").correct
    assert not grading.grade("math", stored, "It is $\\boxed{0.7}$", grader="math-verify").correct
    numeric = grading.StoredGold(gt="12", gt_cot="None")
    assert grading.grade("gsm8k", numeric, "\\boxed{12}", grader="math-verify").correct
    assert grading.grade("olympiadbench", grading.StoredGold(gt="\\frac{1}{2}"), "$\\boxed{0.5}$",
                         grader="math-verify").correct


def test_math_verify_refuses_what_it_cannot_grade():
    over = grading.grade("gsm8k", gsm8k("7"), "7" * (grading.MAX_TEXT_CHARS + 1), grader="math-verify")
    assert not over.correct and "too long" in over.error
    no_gold = grading.grade("gsm8k", gsm8k("no number here"), "\\boxed{7}", grader="math-verify")
    assert not no_gold.correct and "no answer in the gold" in no_gold.error
    with pytest.raises(ValueError, match="unknown grader 'sympy'"):
        grading.grade_many("gsm8k", [gsm8k("7")], ["7"], grader="sympy")


def test_grading_versions_name_the_libraries():
    versions = grading.grading_versions()
    assert all(versions[lib] for lib in GRADING_LIBRARIES)


def test_grade_command_takes_the_grader(tmp_path, capsys):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(src, [{"example": row, "completion": c} for b, row, c, _, _ in CASES if b == "math"])
    for grader in ("qwen", "math-verify"):
        assert cli.main(["grade", "--benchmark", "math", "--input", str(src), "--output", str(dst),
                         "--grader", grader]) == 0
        want = [q if grader == "qwen" else mv for b, _, _, q, mv in CASES if b == "math"]
        assert [r["correct"] for r in read_jsonl(dst)] == want
        assert f"({grader} grader, ours format)" in capsys.readouterr().out
    assert cli.main(["grade", "--benchmark", "math", "--input", str(src), "--output", str(dst),
                     "--grader", "sympy"]) != 0
    assert "--grader" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--grader"):
        resolve(GradeConfig, cli={"benchmark": "math", "input": "a", "output": "b", "grader": "exact"})


# ------------------------------------------------------------------------------------------------ eval


ROWS = [gsm8k("7"), gsm8k("50"), gsm8k("9")]
ANSWERS = {"7?": "So \\boxed{7}.", "50?": "Half: \\boxed{0.5}", "9?": "It is \\boxed{10}."}  # by the question's end


@pytest.fixture
def data_dir(tmp_path) -> Path:
    write_jsonl(tmp_path / "data" / "gsm8k" / "test.jsonl", ROWS)
    return tmp_path / "data"


@pytest.fixture
def generated(monkeypatch) -> list[int]:
    """Generation replaced by ANSWERS (the model still loads); returns the number of prompts of each call."""
    calls: list[int] = []

    def fake_iter_generate(model, tok, prompts, **kw):
        calls.append(len(prompts))
        for i, p in enumerate(prompts):
            prompt = tok.decode(p)
            text = next(a for end, a in ANSWERS.items() if f"answer, {end}" in prompt)
            yield [i], [G.GenOutput(text, [1] * 3, "stop", 0.1)], 0.1

    monkeypatch.setattr(EV, "iter_generate", fake_iter_generate)
    return calls


def eval_config(out: Path, model: str, data: Path, **kw) -> E.EvalConfig:
    return resolve(E.EvalConfig, cli={"model": model, "output": str(out), "data_dir": str(data),
                                      "benchmarks": "gsm8k", **FAST, **kw})


def test_eval_with_math_verify_names_it_everywhere(tmp_path, model_dirs, data_dir, generated):
    out = tmp_path / "run"
    assert E.main(eval_config(out, model_dirs[0], data_dir, grader="math-verify")) == 0
    records = read_jsonl(out / "gsm8k.jsonl")
    assert [r["correct"] for r in records] == [True, False, False]  # 0.5 for 50: the toolkit would say right
    assert all(r["grader"] == "math-verify" for r in records)
    for r, row in zip(records, ROWS):
        g = grading.grade("gsm8k", dict(row), r["completion"], grader="math-verify")
        assert (r["pred"], r["gold"], r["correct"]) == (g.pred, g.gold, g.correct)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["grader"] == "math-verify" and summary["benchmarks"]["gsm8k"]["accuracy"] == 33.3
    assert "- grader: `math-verify`" in (out / "summary.md").read_text()
    meta = json.loads((out / "meta.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert meta["grader"] == "math-verify" and meta["config"]["grader"] == "math-verify"
    for versions in (meta["versions"], config["environment"]):
        assert all(versions[lib] for lib in GRADING_LIBRARIES) and "torch" in versions
    toolkit = read_jsonl(next((out / "toolkit" / "gsm8k").glob("*.jsonl")))
    assert [t["score"] for t in toolkit] == [[r["correct"]] for r in records]


def test_a_changed_grader_is_a_changed_setting(tmp_path, model_dirs, data_dir, generated):
    out = tmp_path / "run"
    assert E.main(eval_config(out, model_dirs[0], data_dir)) == 0
    qwen_records = read_jsonl(out / "gsm8k.jsonl")
    assert [r["correct"] for r in qwen_records] == [True, True, False] and generated == [3]
    assert json.loads((out / "summary.json").read_text())["grader"] == "qwen"

    cfg = eval_config(out, model_dirs[0], data_dir, grader="math-verify")
    state = layout.stage_state(out, E.identity(cfg))
    assert state.status == "changed" and state.diffs == ("settings.grader: 'qwen' -> 'math-verify'",)
    with pytest.raises(InputError, match=r"settings.grader: 'qwen' -> 'math-verify'.*--rerun"):
        E.main(cfg)

    # --rerun grades the kept completions again and generates nothing
    assert E.main(eval_config(out, model_dirs[0], data_dir, grader="math-verify", rerun=True)) == 0
    assert generated == [3]
    records = read_jsonl(out / "gsm8k.jsonl")
    assert [r["completion"] for r in records] == [r["completion"] for r in qwen_records]
    assert [r["correct"] for r in records] == [True, False, False]
    assert [r["grader"] for r in records] == ["math-verify"] * 3
    assert json.loads((out / "summary.json").read_text())["grader"] == "math-verify"
    assert layout.stage_state(out, E.identity(cfg)).status == "done"
    # and back: the toolkit's verdicts again, still without generating
    assert E.main(eval_config(out, model_dirs[0], data_dir, rerun=True)) == 0
    assert generated == [3] and [r["correct"] for r in read_jsonl(out / "gsm8k.jsonl")] == [True, True, False]


def test_a_changed_grading_timeout_grades_again_without_generating(tmp_path, model_dirs, data_dir, generated):
    out = tmp_path / "run"
    assert E.main(eval_config(out, model_dirs[0], data_dir)) == 0
    assert [r["grade_timeout"] for r in read_jsonl(out / "gsm8k.jsonl")] == [grading.DEFAULT_TIMEOUT] * 3
    assert E.main(eval_config(out, model_dirs[0], data_dir, grade_timeout=7.5, rerun=True)) == 0
    assert generated == [3]  # the completions are kept; their verdicts are the new timeout's
    assert [r["grade_timeout"] for r in read_jsonl(out / "gsm8k.jsonl")] == [7.5] * 3


def test_changed_benchmark_data_is_never_graded_with_old_completions(tmp_path, model_dirs, data_dir, generated):
    out = tmp_path / "run"
    assert E.main(eval_config(out, model_dirs[0], data_dir)) == 0
    assert [r["correct"] for r in read_jsonl(out / "gsm8k.jsonl")] == [True, True, False]
    mended = dict(gsm8k("7"), answer="Work.\n#### 8")  # a gold mended in place
    write_jsonl(data_dir / "gsm8k" / "test.jsonl", [mended, gsm8k("50"), gsm8k("9")])
    with pytest.raises(InputError, match="--rerun"):
        E.main(eval_config(out, model_dirs[0], data_dir))
    assert E.main(eval_config(out, model_dirs[0], data_dir, rerun=True)) == 0
    assert generated == [3, 3]  # generated again for the new data, not re-used
    records = read_jsonl(out / "gsm8k.jsonl")
    assert [r["correct"] for r in records] == [False, True, False] and records[0]["gold"] == "8"
