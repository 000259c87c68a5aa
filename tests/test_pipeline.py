"""`lightreasoner run` and `lightreasoner sft` end to end on tiny models (generator data, held-out evaluation)."""

from __future__ import annotations

import json

import pytest

from lightreasoner.cli import main as cli_main
from lightreasoner.problems import generate_problems
from lightreasoner.sft import sft_records
from lightreasoner.utils import read_complete_jsonl, read_json

TINY = ["--max-problems", "4", "--max-new-tokens", "8", "--sample-batch-size", "2", "--beta", "0.5",
        "--steps-per-update", "4", "--max-steps", "3", "--save-every", "2", "--eval-limit", "3",
        "--eval-max-new-tokens", "8", "--eval-batch-size", "3", "--perplexity-problems", "2", "--dtype", "float32",
        "--device", "cpu", "--lr", "1e-3"]


def run_args(model_dirs, run, *extra: str) -> list[str]:
    """`lightreasoner run` on the tiny pair with generated problems, into ``run``."""
    edir, adir = model_dirs
    return ["run", "--expert", edir, "--amateur", adir, "--data", "none", "--output", str(run), *TINY, *extra]


def test_run_end_to_end_resumes_and_reports(model_dirs, tmp_path, capsys):
    run = tmp_path / "run"
    args = run_args(model_dirs, run)
    assert cli_main(args) == 0
    for path in ("samples.jsonl", "samples.manifest.json", "adapter/summary.json", "merged/config.json",
                 "eval/base/summary.json", "eval/tuned/summary.json", "perplexity.json", "report.md",
                 "report.html", "run_config.json", "timings.json", "heldout/gsm8k/test.jsonl"):
        assert (run / path).exists(), path
    timings = read_json(run / "timings.json")
    assert set(timings) >= {"sample", "train", "merge", "eval_base", "eval_tuned"}
    ppl = read_json(run / "perplexity.json")["checkpoints"]
    assert [p["name"] for p in ppl][0] == "base" and ppl[-1]["name"] == "final" and len(ppl) >= 3
    report = (run / "report.md").read_text()
    assert "tuned" in report.lower() and "KL" in report
    # Rerunning finds every stage complete and changes nothing.
    before = {p: (run / p).read_text() for p in ("samples.jsonl", "eval/tuned/summary.json")}
    assert cli_main(args) == 0
    assert read_json(run / "timings.json") == timings
    assert {p: (run / p).read_text() for p in before} == before
    # A larger evaluation selection evaluates again, reusing the finished records (only eval stages run).
    old = read_complete_jsonl(run / "eval" / "tuned" / "gsm8k.jsonl")
    assert cli_main(args + ["--eval-limit", "5"]) == 0
    new = read_complete_jsonl(run / "eval" / "tuned" / "gsm8k.jsonl")
    assert len(old) == 3 and len(new) == 5 and new[:3] == old
    assert read_json(run / "eval" / "base" / "summary.json")["totals"]["n"] == 5
    grown = read_json(run / "timings.json")
    assert grown["eval_tuned"] > timings["eval_tuned"] and grown["sample"] == timings["sample"]


def test_run_resumes_after_a_failed_stage(model_dirs, tmp_path, monkeypatch):
    from lightreasoner import evaluate

    run = tmp_path / "run"
    args = run_args(model_dirs, run, "--perplexity-problems", "0")
    real = evaluate.main
    monkeypatch.setattr(evaluate, "main", lambda cfg: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert cli_main(args) == 130
    assert (run / "adapter" / "summary.json").exists() and not (run / "eval" / "base" / "summary.json").exists()
    monkeypatch.setattr(evaluate, "main", real)
    mtime = (run / "samples.jsonl").stat().st_mtime_ns
    assert cli_main(args) == 0
    assert (run / "samples.jsonl").stat().st_mtime_ns == mtime  # not sampled again
    assert (run / "eval" / "tuned" / "summary.json").exists()


def test_run_with_sft_evaluates_the_baseline_and_fills_the_efficiency_table(model_dirs, tmp_path, monkeypatch, capsys):
    from lightreasoner import sft

    # Tiny random models are never right; grade every finished solution right so the baseline has data.
    monkeypatch.setattr(sft, "grade_against_reference", lambda completion, answer: ("1", True))
    run = tmp_path / "run"
    args = run_args(model_dirs, run, "--perplexity-problems", "0", "--with-sft", "--sft-samples-per-problem", "2",
                    "--sft-max-new-tokens", "6", "--sft-epochs", "1")
    # ...but they never stop within 6 tokens either, and unfinished solutions are not kept: a clear error.
    assert cli_main(args) == 2
    assert "were cut at --sft-max-new-tokens 6" in capsys.readouterr().err  # run's flag, not sft's
    assert len(read_complete_jsonl(run / "sft" / "candidates.jsonl")) == 8
    # Count them finished (as a capable model's would be); the rerun reuses the candidates and goes on.
    real = sft.sft_records
    monkeypatch.setattr(sft, "sft_records", lambda cands: real([{**c, "finish_reason": "eos"} for c in cands]))
    assert cli_main(args) == 0
    assert {"sft", "eval_sft"} <= set(read_json(run / "timings.json"))
    s = read_json(run / "sft" / "summary.json")
    assert s["problems_sampled"] == 4 and s["tuned_tokens"] > 0
    assert read_json(run / "sft" / "adapter" / "train_config.json")["config"]["epochs"] == 1
    assert read_json(run / "eval" / "sft" / "summary.json")["totals"]["n"] == 3
    report = (run / "report.md").read_text()
    assert "| SFT |" in report and "LightReasoner / SFT" in report


def test_stage_errors_name_runs_flags(model_dirs, tmp_path, capsys):
    from lightreasoner.pipeline import EVAL_FLAGS, SFT_FLAGS, as_run_flags

    assert as_run_flags("--max-new-tokens 6 (not --sft-max-new-tokens, --max-new-tokens-x)", SFT_FLAGS) == \
        "--sft-max-new-tokens 6 (not --sft-max-new-tokens, --max-new-tokens-x)"
    assert as_run_flags("--limit 5; --batch-size 0", EVAL_FLAGS) == "--eval-limit 5; --eval-batch-size 0"
    # A bad SFT setting that only the SFT stage's config checks: the error names run's flags, both at once.
    run = tmp_path / "run"
    args = run_args(model_dirs, run, "--perplexity-problems", "0", "--with-sft", "--sft-samples-per-problem", "0",
                    "--sft-temperature", "0")
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "--sft-samples-per-problem must be >= 1" in err and "--sft-temperature must be > 0" in err
    assert (run / "eval" / "tuned" / "summary.json").exists()  # the stages before it are done and kept


def test_sft_keeps_only_right_finished_unique_solutions():
    cands = [
        {"id": "a#0", "problem_id": "a", "question": "q", "prompt_ids": [1], "completion_ids": [5, 6, 256],
         "correct": True, "finish_reason": "eos"},
        {"id": "a#1", "problem_id": "a", "question": "q", "prompt_ids": [1], "completion_ids": [5, 6, 256],
         "correct": True, "finish_reason": "eos"},  # duplicate
        {"id": "a#2", "problem_id": "a", "question": "q", "prompt_ids": [1], "completion_ids": [7, 256],
         "correct": False, "finish_reason": "eos"},
        {"id": "b#0", "problem_id": "b", "question": "q2", "prompt_ids": [1], "completion_ids": [9, 9],
         "correct": True, "finish_reason": "length"},
    ]
    recs = sft_records(cands)
    assert [r["id"] for r in recs] == ["a#0"]
    assert [(s["pos"], s["token_ids"], s["weights"]) for s in recs[0]["steps"]] == [
        (0, [5], [1.0]), (1, [6], [1.0]), (2, [256], [1.0])]


def test_sft_stage_samples_grades_and_trains(model_dirs, tmp_path, monkeypatch):
    edir, _ = model_dirs
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"question": p.question, "answer": p.solution}) + "\n"
                            for p in generate_problems(3, seed=5)))
    out = tmp_path / "sft"
    args = ["sft", "--expert", edir, "--data", str(data), "--output", str(out), "--samples-per-problem", "3",
            "--max-new-tokens", "6", "--batch-size", "9", "--dtype", "float32", "--device", "cpu", "--no-progress"]
    # Random tiny models are never right: the stage says so clearly instead of training on nothing.
    assert cli_main(args) == 2
    cands = read_complete_jsonl(out / "candidates.jsonl")
    assert len(cands) == 9 and all(c["correct"] is False for c in cands)
    # Mark two solutions right (as a capable model would produce) and the stage trains on them.
    for c in cands[:2]:
        c["correct"] = True
        c["finish_reason"] = "eos"
    (out / "candidates.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cands))
    # Killed after the first update: the checkpoint it saved is where the rerun continues.
    from lightreasoner import train as train_stage

    real = train_stage._save_checkpoint

    def killed_after_saving(*a, **kw):
        real(*a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_stage, "_save_checkpoint", killed_after_saving)
    assert cli_main(args + ["--save-every", "1", "--steps-per-update", "4"]) == 130  # like Ctrl-C
    monkeypatch.setattr(train_stage, "_save_checkpoint", real)
    assert train_stage.find_checkpoint(out / "adapter", "auto").name == "step-000001"
    assert read_json(out / "timings.json")["training"] > 0 and not (out / "summary.json").exists()
    assert cli_main(args + ["--save-every", "1", "--steps-per-update", "4", "--max-tokens-per-forward", "8"]) == 0
    assert read_json(out / "adapter" / "train_config.json")["config"]["max_tokens_per_forward"] == 8
    s = read_json(out / "summary.json")
    assert s["problems_sampled"] == 3 and s["trajectories"] == 2 and s["problems_used"] == 1
    assert s["tuned_tokens"] > 0 and (out / "adapter" / "adapter_config.json").exists()


def test_sigterm_stops_a_command_like_ctrl_c(model_dirs, tmp_path, monkeypatch):
    """`kill` during a stage: exit 130, the stage's time so far is recorded, and a rerun resumes."""
    import os
    import signal

    from lightreasoner import evaluate

    run = tmp_path / "run"
    args = run_args(model_dirs, run, "--perplexity-problems", "0")
    real = evaluate.main

    def killed(cfg):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(cfg)  # not reached: the signal interrupts first

    monkeypatch.setattr(evaluate, "main", killed)
    before = signal.getsignal(signal.SIGTERM)
    assert cli_main(args) == 130
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is the command's only
    assert "eval_base" in read_json(run / "timings.json")
    assert not (run / "eval" / "base" / "summary.json").exists()
    monkeypatch.setattr(evaluate, "main", real)
    assert cli_main(args) == 0 and (run / "eval" / "tuned" / "summary.json").exists()


@pytest.mark.parametrize("command", [
    ["run", "--data", "none"],
    ["eval", "--model", "m", "--output", "o"],
    ["sft", "--output", "o"],
    ["merge", "--adapter", "a", "--output", "o"],
])
def test_single_process_stages_refuse_a_launcher(command, monkeypatch, tmp_path, capsys):
    """Under several processes, stages that would duplicate work stop at once, name the fix, write nothing."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert cli_main(command) == 2
    err = capsys.readouterr().err
    assert f"`lightreasoner {command[0]}` runs in one process" in err and "WORLD_SIZE=2" in err
    assert "`sample` and `train`" in err
    assert [p.name for p in tmp_path.iterdir()] in ([], ["o"]) and not any(tmp_path.rglob("*.json*"))
