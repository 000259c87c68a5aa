"""The Qwen2.5-Math toolkit's file formats: `eval` writes its per-sample JSONL and metrics beside ours (consistent
with our summary), and `grade` reads the toolkit's per-sample files back, reproducing their scores."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lightreasoner import evaluate as E
from lightreasoner import evaluation as EV
from lightreasoner import generation as G
from lightreasoner import grading
from lightreasoner import toolkit_format as T
from lightreasoner.config import resolve
from lightreasoner.grade import GradeConfig, grade_main
from lightreasoner.testing import gsm8k_style_rows
from lightreasoner.utils import InputError

FAST = {"max_new_tokens": 12, "batch_size": 4, "dtype": "float32", "device": "cpu"}
MATH_ROWS = [
    {"problem": "What is 1/2 + 1/4?", "solution": "It is $\\frac{2}{4}+\\frac14 = \\boxed{\\frac{3}{4}}$.",
     "level": "Level 1", "type": "Algebra"},
    {"problem": "Compute 2 times 3.", "solution": "$2 \\cdot 3 = \\boxed{6}$", "level": "Level 1",
     "type": "Prealgebra"},
    {"problem": "Simplify x plus x.", "solution": "We get $\\boxed{2x}$.", "level": "Level 2", "type": "Algebra"},
]
# What the fake model answers, by the start of the question: right, wrong, or with no answer at all.
ANSWERS = {"Tom has": "So he has \\boxed{7} apples.", "A box": "That is \\boxed{31} eggs.",
           "Sara had": "I do not know.", "A train": "It goes 190 miles.", "Each of": "\\boxed{8}",
           "What is 1/2": "The sum is \\boxed{0.75}.", "Compute 2": "\\boxed{5}", "Simplify x": "\\boxed{x+x}"}
TOOLKIT_KEYS_HEAD = ["idx", "question", "gt_cot", "gt"]
TOOLKIT_KEYS_TAIL = ["code", "pred", "report", "score"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def data_dir(tmp_path) -> Path:
    root = tmp_path / "data"
    write_jsonl(root / "gsm8k" / "test.jsonl", gsm8k_style_rows())
    write_jsonl(root / "math" / "test.jsonl", MATH_ROWS)
    return root


@pytest.fixture
def fake_model_text(monkeypatch):
    """Generation replaced by ANSWERS (the model still loads): each completion is known, so are the verdicts."""
    calls = []

    def fake_iter_generate(model, tok, prompts, **kw):
        calls.append(len(prompts))
        for i, p in enumerate(prompts):
            prompt = tok.decode(p)
            text = next(a for start, a in ANSWERS.items() if start in prompt)
            yield [i], [G.GenOutput(G.postprocess_completion(text), [1] * 5, "stop", 0.25)], 0.25

    monkeypatch.setattr(EV, "iter_generate", fake_iter_generate)
    return calls


def run_eval(out: Path, model: str, data: Path, **kw) -> dict:
    cfg = resolve(E.EvalConfig, cli={"model": model, "output": str(out), "data_dir": str(data),
                                     "benchmarks": "gsm8k,math", **FAST, **kw})
    assert E.main(cfg) == 0
    return json.loads((out / "summary.json").read_text())


def toolkit_files(out: Path, benchmark: str, limit: int = -1) -> tuple[Path, Path]:
    folder = out / "toolkit" / benchmark
    stem = f"test_qwen25-math-cot_{limit}_seed0_t0.0_s0_e-1"
    return folder / f"{stem}.jsonl", folder / f"{stem}_qwen25-math-cot_metrics.json"


def test_eval_writes_the_toolkits_files_consistent_with_the_summary(tmp_path, model_dirs, data_dir,
                                                                     fake_model_text):
    out = tmp_path / "run"
    summary = run_eval(out, model_dirs[0], data_dir)
    for b, rows in (("gsm8k", gsm8k_style_rows()), ("math", MATH_ROWS)):
        samples_path, metrics_path = toolkit_files(out, b)
        assert sorted(p.name for p in samples_path.parent.iterdir()) == sorted([samples_path.name, metrics_path.name])
        samples, records = read_jsonl(samples_path), read_jsonl(out / f"{b}.jsonl")
        assert len(samples) == len(records) == len(rows)
        for i, (s, r, row) in enumerate(zip(samples, records, rows)):
            keys = list(s)
            assert keys[:4] == TOOLKIT_KEYS_HEAD and keys[-4:] == TOOLKIT_KEYS_TAIL
            copied = keys[4:-4]
            assert copied == [k for k in T.COPIED_FIELDS if k in row]  # the toolkit's order
            assert all(s[k] == row[k] for k in copied)
            assert s["idx"] == i and r["id"] == str(i)
            assert s["question"] == grading.parse_question(b, dict(row))
            assert s["gt"] == r["gold"] == grading.parse_gold(b, dict(row))
            assert s["code"] == [r["completion"]] and s["pred"] == [r["pred"]] and s["score"] == [r["correct"]]
            assert s["report"] == [None]
        cots = [s["gt_cot"] for s in samples]
        if b == "gsm8k":
            assert cots == [row["answer"].split("####")[0].strip() for row in rows]
        else:
            assert cots == [row["solution"].strip() for row in rows]

        metrics = json.loads(metrics_path.read_text())
        ours = summary["benchmarks"][b]
        assert metrics["num_samples"] == metrics["num_scores"] == ours["n"]
        assert metrics["acc"] == ours["accuracy"]
        assert metrics["timeout_samples"] == 0
        assert metrics["empty_samples"] == sum(not r["pred"] for r in records)
        assert metrics["time_use_in_second"] == ours["generation_seconds"]
        assert re.fullmatch(r"\d+:\d\d", metrics["time_use_in_minite"])
        assert metrics_path.read_text().startswith("{\n    \"num_samples\"")  # json.dump(indent=4), as the toolkit
    # The fake answers make the figures known: gsm8k 7 and 8 right of 5; math: 0.75 and x+x right.
    assert [s["score"][0] for s in read_jsonl(toolkit_files(out, "gsm8k")[0])] == [True, False, False, False, True]
    gsm8k_metrics = json.loads(toolkit_files(out, "gsm8k")[1].read_text())
    assert gsm8k_metrics["acc"] == 40.0 and gsm8k_metrics["empty_samples"] == 1  # "I do not know."
    assert "type_acc" not in gsm8k_metrics
    math_metrics = json.loads(toolkit_files(out, "math")[1].read_text())
    assert math_metrics["acc"] == 66.7 and math_metrics["type_acc"] == {"Algebra": 100.0, "Prealgebra": 0.0}


def test_toolkit_files_name_the_limit_and_follow_a_rerun(tmp_path, model_dirs, data_dir, fake_model_text):
    out = tmp_path / "run"
    run_eval(out, model_dirs[0], data_dir, limit=2)
    assert toolkit_files(out, "gsm8k", 2)[0].is_file()
    run_eval(out, model_dirs[0], data_dir, limit=3, rerun=True)
    assert not toolkit_files(out, "gsm8k", 2)[0].exists()  # the files describe the finished evaluation only
    assert len(read_jsonl(toolkit_files(out, "gsm8k", 3)[0])) == 3


def test_toolkit_sample_of_a_multiple_choice_row():
    row = {"idx": 4, "question": "Which is prime?", "choices": ["4", " 7 ", "8", "9"], "answer": 1}
    record = {"completion": "The answer is (B).", "pred": "B", "correct": True}
    s = T.toolkit_sample("mmlu_stem", row, record)
    assert s["choices"] == ["(A) 4", "(B) 7", "(C) 8", "(D) 9"]  # as the toolkit's question reader leaves them
    assert row["choices"] == ["4", " 7 ", "8", "9"]  # the row itself is untouched
    assert (s["gt"], s["gt_cot"], s["answer"]) == ("B", "None", 1)
    assert s["question"].endswith("Answer Choices: (A) 4 (B) 7 (C) 8 (D) 9")


def test_toolkit_metrics_count_timeouts_and_empty_answers():
    samples = [{"pred": [None], "score": [False]}, {"pred": [""], "score": [False]},
               {"pred": ["3"], "score": [True]}, {"pred": ["4"], "score": [False]}]
    m = T.toolkit_metrics(samples, timeouts=1, seconds=125.5)
    assert (m["num_samples"], m["num_scores"], m["timeout_samples"], m["empty_samples"], m["acc"]) == (4, 4, 1, 2, 25.0)
    assert m["time_use_in_minite"] == "2:05" and list(m)[-2:] == ["time_use_in_second", "time_use_in_minite"]
    assert T.is_timeout({"error": "timeout: the symbolic comparison took more than 3s"})
    assert not T.is_timeout({"error": None}) and not T.is_timeout({})


# ------------------------------------------------------------------------------------------------ grade


def toolkit_line(idx: int, gt: str, codes: list[str], scores: list[bool], gt_cot: str = "None", **extra) -> dict:
    """A line as the toolkit's math_eval.py writes it (after evaluate.py has scored it)."""
    return {"idx": idx, "question": f"question {idx}", "gt_cot": gt_cot, "gt": gt, **extra, "code": codes,
            "pred": ["?"] * len(codes), "report": [None] * len(codes), "score": scores}


def test_grade_reproduces_the_scores_of_an_eval_toolkit_file(tmp_path, model_dirs, data_dir, fake_model_text, capsys):
    out = tmp_path / "run"
    run_eval(out, model_dirs[0], data_dir)
    for b in ("gsm8k", "math"):
        src = toolkit_files(out, b)[0]
        dst = tmp_path / f"{b}.graded.jsonl"
        assert grade_main(GradeConfig(benchmark=b, input=str(src), output=str(dst))) == 0
        assert read_jsonl(dst) == read_jsonl(src)  # same lines: same preds and the same scores
        printed = capsys.readouterr().out
        n = len(read_jsonl(src))
        assert f"{n} of {n} verdicts equal" in printed and "toolkit format" in printed


def test_grade_reads_toolkit_lines_with_several_completions(tmp_path, capsys):
    src, dst = tmp_path / "toolkit.jsonl", tmp_path / "graded.jsonl"

    def grade_lines(benchmark: str, lines: list[dict]) -> list[dict]:
        write_jsonl(src, lines)
        assert grade_main(GradeConfig(benchmark=benchmark, input=str(src), output=str(dst))) == 0
        graded = read_jsonl(dst)
        assert all(list(g) == list(line) for g, line in zip(graded, lines))  # the toolkit's fields, in its order
        return graded

    # minerva_math keeps the gold's units; the toolkit stores the gold as compared
    cot = "The rod is $\\boxed{5\\text{ m}}$ long."
    gt = grading.parse_gold("minerva_math", {"solution": cot})
    graded = grade_lines("minerva_math", [toolkit_line(0, gt, ["So \\boxed{5\\text{ m}}.", "So \\boxed{6}."],
                                                       [True, False], gt_cot=cot)])
    assert graded[0]["score"] == [True, False] and graded[0]["pred"][1] == "6"
    assert "2 of 2 verdicts equal" in capsys.readouterr().out
    # a letter gold: the multiple-choice repair reads the letter from the whole completion
    graded = grade_lines("mmlu_stem", [toolkit_line(1, "C", ["Hence the answer is (C).", "\\boxed{D}"],
                                                    [True, False])])
    assert graded[0]["score"] == [True, False] and graded[0]["pred"] == ["C", "D"]
    # a score the toolkit would not give is corrected, and the disagreement is said
    graded = grade_lines("gsm8k", [toolkit_line(2, "12", ["\\boxed{12}"], [False])])
    assert graded[0]["score"] == [True]
    printed = capsys.readouterr().out
    assert "0 of 1 verdicts equal" in printed and "accuracy 100.0 (1/1)" in printed


def test_grade_refuses_mixed_or_broken_toolkit_files(tmp_path):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ours = {"example": {"question": "q", "answer": "x\n#### 3"}, "completion": "\\boxed{3}"}
    write_jsonl(src, [toolkit_line(0, "3", ["\\boxed{3}"], [True]), ours])
    with pytest.raises(InputError, match=r"in\.jsonl:2: a line of the ours format in a file of the toolkit format"):
        grade_main(GradeConfig(benchmark="gsm8k", input=str(src), output=str(dst)))
    write_jsonl(src, [toolkit_line(0, "3", [], [])])
    with pytest.raises(InputError, match=r"in\.jsonl:1: .*\"code\" must be a non-empty list"):
        grade_main(GradeConfig(benchmark="gsm8k", input=str(src), output=str(dst)))
    write_jsonl(src, [toolkit_line(0, 3, ["\\boxed{3}"], [True])])  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"in\.jsonl:1: .*\"gt\" is int"):
        grade_main(GradeConfig(benchmark="gsm8k", input=str(src), output=str(dst)))
    assert not dst.exists()
