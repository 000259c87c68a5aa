"""`lightreasoner run` and `lightreasoner sft` end to end on tiny models (generator data, held-out evaluation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightreasoner.cli import main as cli_main
from lightreasoner.problems import generate_problems
from lightreasoner.sft import sft_records
from lightreasoner.utils import read_complete_jsonl, read_json

TINY = ["--sample.max-problems", "4", "--sample.max-new-tokens", "8", "--sample.batch-size", "2",
        "--sample.beta", "0.5", "--train.steps-per-update", "4", "--train.max-steps", "3", "--train.save-every", "2",
        "--train.lr", "1e-3", "--eval.limit", "3", "--eval.max-new-tokens", "8", "--eval.batch-size", "3",
        "--perplexity-problems", "2", "--dtype", "float32", "--device", "cpu"]


def run_args(model_dirs, run, *extra: str) -> list[str]:
    """`lightreasoner run` on the tiny pair with generated problems, into ``run``."""
    edir, adir = model_dirs
    return ["run", "--expert", edir, "--amateur", adir, "--data", "generated", "--output", str(run), *TINY, *extra]


def meta(folder):
    return read_json(folder / "meta.json")


def assert_cards_hold_the_results(run: Path, n: int) -> None:
    """The adapter's and the merged model's model cards show the run's measured accuracies (both models, each
    with its interval) and the paired change, once the tuned model is evaluated."""
    from lightreasoner import stats

    for folder in (run / "train", run / "merge"):
        text = (folder / "README.md").read_text()
        assert "Not evaluated yet" not in text, folder
        for label in ("base", "tuned"):
            s = read_json(run / "eval" / label / "summary.json")["benchmarks"]["gsm8k"]
            lo, hi = stats.accuracy_ci(s["correct"], s["n"])
            assert s["n"] == n and f"| {label} | gsm8k | {n} | {s['correct']} |" in text, (folder, label)
            assert f"{lo:.1f} .. {hi:.1f} |" in text, (folder, label)
        assert "Paired change (tuned - base" in text and f"| gsm8k | {n} | " in text.split("Paired change")[1]


def test_run_end_to_end_resumes_and_reports(model_dirs, tmp_path, capsys, caplog):
    run = tmp_path / "run"
    args = run_args(model_dirs, run)
    assert cli_main(args) == 0
    for path in ("config.yaml", "sample/samples.jsonl", "sample/meta.json", "train/summary.json", "train/meta.json",
                 "merge/config.json", "merge/meta.json", "eval/base/summary.json", "eval/tuned/meta.json",
                 "perplexity/perplexity.json", "perplexity/meta.json", "report/report.md", "report/report.html",
                 "report/meta.json"):
        assert (run / path).exists(), path
    assert meta(run / "train")["identity"]["inputs"]["samples"] == meta(run / "sample")["fingerprint"]
    assert meta(run / "eval" / "tuned")["identity"]["inputs"]["model"] == meta(run / "merge")["fingerprint"]
    ppl = read_json(run / "perplexity" / "perplexity.json")["checkpoints"]
    assert [p["name"] for p in ppl][0] == "base" and ppl[-1]["name"] == "final" and len(ppl) >= 3
    report = (run / "report" / "report.md").read_text()
    assert "tuned" in report.lower() and "KL" in report
    assert_cards_hold_the_results(run, n=3)
    # Rerunning finds every stage done and changes nothing; so does replaying the saved config.
    metas = {p: (p / "meta.json").read_text() for p in run.glob("**/") if (p / "meta.json").is_file()}
    caplog.set_level("INFO", logger="lightreasoner")
    assert cli_main(args) == 0
    assert cli_main(["run", "--config", str(run / "config.yaml")]) == 0
    assert {p: (p / "meta.json").read_text() for p in metas} == metas
    assert "nothing to do" in caplog.text
    # A larger evaluation selection is refused by name; --rerun evaluates again, reusing the finished records,
    # and redoes exactly the stages it affects.
    old = read_complete_jsonl(run / "eval" / "tuned" / "gsm8k.jsonl")
    assert cli_main(args + ["--eval.limit", "5"]) == 2
    err = capsys.readouterr().err
    assert "settings.limit: 3 -> 5" in err and "eval_base" in err and "eval_tuned" in err and "--rerun" in err
    assert "sample (" not in err and "train (" not in err
    assert cli_main(args + ["--eval.limit", "5", "--rerun"]) == 0
    new = read_complete_jsonl(run / "eval" / "tuned" / "gsm8k.jsonl")
    assert len(old) == 3 and len(new) == 5 and new[:3] == old
    assert read_json(run / "eval" / "base" / "summary.json")["totals"]["n"] == 5
    assert_cards_hold_the_results(run, n=5)  # the re-evaluation's figures, not the first's
    for stage in ("sample", "train", "merge", "perplexity"):
        assert (run / stage / "meta.json").read_text() == metas[run / stage], stage
    assert (run / "report" / "meta.json").read_text() != metas[run / "report"]


def test_a_changed_setting_is_refused_before_any_work_and_rerun_redoes_downstream(model_dirs, tmp_path, capsys):
    run = tmp_path / "run"
    args = run_args(model_dirs, run, "--perplexity-problems", "0")
    assert cli_main(args) == 0
    before = {s: meta(run / s)["fingerprint"] for s in ("sample", "train", "merge", "eval/base", "eval/tuned")}
    capsys.readouterr()
    assert cli_main(args + ["--sample.beta", "0.6"]) == 2
    err = capsys.readouterr().err
    assert "settings.beta: 0.5 -> 0.6" in err
    assert "stages affected: sample, train, merge, eval_tuned, report" in err
    assert meta(run / "sample")["fingerprint"] == before["sample"]  # nothing was touched
    assert cli_main(args + ["--sample.beta", "0.6", "--rerun"]) == 0
    after = {s: meta(run / s)["fingerprint"] for s in before}
    assert after["eval/base"] == before["eval/base"]  # not affected: kept
    assert all(after[s] != before[s] for s in ("sample", "train", "merge", "eval/tuned"))
    assert meta(run / "sample")["config"]["beta"] == 0.6


def test_run_config_errors_name_the_section_flags(model_dirs, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli_main(run_args(model_dirs, run, "--sft.samples-per-problem", "0", "--sft.temperature", "0",
                             "--sample.alpha", "3", "--eval.batch-size", "0")) == 2
    err = capsys.readouterr().err
    for text in ("--sft.samples-per-problem must be >= 1", "--sft.temperature must be > 0",
                 "--sample.alpha must be in (0, 1]", "--eval.batch-size must be > 0"):
        assert text in err, text
    assert not run.exists()  # before any work
    assert cli_main(run_args(model_dirs, run, "--sample.output", "x", "--train.bogus", "1")) == 2
    err = capsys.readouterr().err
    assert "--sample.output is set by `run`" in err and "--train.bogus: unknown option" in err


def test_missing_data_is_an_error_not_a_substitute(model_dirs, tmp_path, capsys):
    args = run_args(model_dirs, tmp_path / "run")
    args[args.index("generated")] = str(tmp_path / "gsm8k_trian.jsonl")
    assert cli_main(args) == 2
    assert "gsm8k_trian.jsonl" in capsys.readouterr().err and not (tmp_path / "run" / "sample").exists()


def test_run_resumes_after_a_failed_stage(model_dirs, tmp_path, monkeypatch):
    from lightreasoner import evaluate

    run = tmp_path / "run"
    args = run_args(model_dirs, run, "--perplexity-problems", "0")
    real = evaluate.main
    monkeypatch.setattr(evaluate, "main", lambda cfg: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert cli_main(args) == 130
    assert (run / "train" / "meta.json").exists() and not (run / "eval" / "base" / "meta.json").exists()
    monkeypatch.setattr(evaluate, "main", real)
    mtime = (run / "sample" / "samples.jsonl").stat().st_mtime_ns
    assert cli_main(args) == 0
    assert (run / "sample" / "samples.jsonl").stat().st_mtime_ns == mtime  # not sampled again
    assert (run / "eval" / "tuned" / "meta.json").exists()


def test_a_merge_killed_at_any_point_is_not_done(model_dirs, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    run = tmp_path / "run"
    args = run_args(model_dirs, run, "--perplexity-problems", "0")
    real = PreTrainedModel.save_pretrained

    def killed_after_the_weights(self, path, *a, **k):  # the weights are written, the tokenizer is not
        real(self, path, *a, **k)
        if Path(path).name == "merge":
            raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", killed_after_the_weights)
    assert cli_main(args) == 130
    assert (run / "merge" / "config.json").exists() and not (run / "merge" / "tokenizer_config.json").exists()
    assert not (run / "merge" / "meta.json").exists()
    monkeypatch.undo()
    assert cli_main(args) == 0 and (run / "merge" / "tokenizer_config.json").exists()
    assert (run / "merge" / "meta.json").exists() and (run / "eval" / "tuned" / "meta.json").exists()


def test_run_with_sft_evaluates_the_baseline_and_fills_the_efficiency_table(model_dirs, tmp_path, monkeypatch, capsys):
    from lightreasoner import sft

    # Tiny random models are never right; grade every finished solution right so the baseline has data.
    monkeypatch.setattr(sft, "grade_against_reference", lambda completion, answer: ("1", True))
    run = tmp_path / "run"
    args = run_args(model_dirs, run, "--perplexity-problems", "0", "--with-sft", "--sft.max-problems", "4",
                    "--sft.samples-per-problem", "2", "--sft.max-new-tokens", "6", "--sft.epochs", "1", "--seed", "0")
    # ...but they never stop within 6 tokens either, and unfinished solutions are not kept: a clear error.
    assert cli_main(args) == 2
    assert "were cut at --sft.max-new-tokens 6" in capsys.readouterr().err  # run's flag, not sft's
    assert len(read_complete_jsonl(run / "sft" / "candidates.jsonl")) == 8
    # Count them finished (as a capable model's would be); the rerun reuses the candidates and goes on.
    real = sft.sft_records
    monkeypatch.setattr(sft, "sft_records", lambda cands: real([{**c, "finish_reason": "eos"} for c in cands]))
    assert cli_main(args) == 0
    s = read_json(run / "sft" / "summary.json")
    assert s["problems_sampled"] == 4 and s["tuned_tokens"] > 0
    assert read_json(run / "sft" / "adapter" / "train_config.json")["config"]["epochs"] == 1
    assert read_json(run / "eval" / "sft" / "summary.json")["totals"]["n"] == 3
    assert meta(run / "eval" / "sft")["identity"]["inputs"]["adapter"] == meta(run / "sft")["fingerprint"]
    # The SFT adapter's card, rewritten once it was evaluated: its accuracy and interval beside the base's.
    from lightreasoner import stats

    text = (run / "sft" / "adapter" / "README.md").read_text()
    assert "# Rejection-sampling SFT LoRA adapter" in text and "Not evaluated yet" not in text
    s_eval = read_json(run / "eval" / "sft" / "summary.json")["benchmarks"]["gsm8k"]
    lo, hi = stats.accuracy_ci(s_eval["correct"], s_eval["n"])
    assert f"| tuned | gsm8k | 3 | {s_eval['correct']} | {s_eval['accuracy']} | {lo:.1f} .. {hi:.1f} |" in text
    assert "| base | gsm8k | 3 |" in text and "Paired change (tuned - base" in text
    report = (run / "report" / "report.md").read_text()
    assert "| SFT |" in report and "LightReasoner / SFT" in report


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
    monkeypatch.chdir(Path(model_dirs[0]).parent)
    edir = Path(model_dirs[0]).name  # the expert as a relative path: its adapter must name it absolutely
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"question": p.question, "answer": p.solution}) + "\n"
                            for p in generate_problems(3, seed=5)))
    out = tmp_path / "sft"
    args = ["sft", "--expert", edir, "--data", str(data), "--output", str(out), "--samples-per-problem", "3",
            "--max-new-tokens", "6", "--batch-size", "9", "--dtype", "float32", "--device", "cpu", "--no-progress",
            "--steps-per-update", "4", "--max-tokens-per-forward", "8"]
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
    from lightreasoner import checkpoint as ck

    real = ck.save

    def killed_after_saving(*a, **kw):
        real(*a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "save", killed_after_saving)
    assert cli_main(args + ["--save-every", "1"]) == 130  # like Ctrl-C
    monkeypatch.setattr(ck, "save", real)
    assert [d.name for d in ck.checkpoint_folders(out / "adapter")] == ["step-000001"]
    assert read_json(out / "timings.json")["training"] > 0 and not (out / "summary.json").exists()
    assert cli_main(args + ["--save-every", "2"]) == 0  # another checkpoint interval: the same result
    assert read_json(out / "adapter" / "train_config.json")["config"]["max_tokens_per_forward"] == 8
    s = read_json(out / "summary.json")
    assert s["problems_sampled"] == 3 and s["trajectories"] == 2 and s["problems_used"] == 1
    assert s["tuned_tokens"] > 0 and (out / "adapter" / "adapter_config.json").exists()
    # The adapter names its base as PEFT resolves it from anywhere (a local folder: its absolute path).
    adapter_config = read_json(out / "adapter" / "adapter_config.json")
    assert adapter_config["base_model_name_or_path"] == str(Path(model_dirs[0]).resolve())
    # Its model card describes the SFT baseline (not LightReasoner), with the base as the adapter names it.
    from lightreasoner import layout, modelcard

    card = modelcard.read_front_matter(out / "adapter" / "README.md")
    text = (out / "adapter" / "README.md").read_text()
    assert card["base_model"] == adapter_config["base_model_name_or_path"] and card["library_name"] == "peft"
    assert "rejection-sampling-sft" in card["tags"] and "contrastive-soft-labels" not in card["tags"]
    assert text.count("# Rejection-sampling SFT LoRA adapter for ") == 1 and "contrastive soft label" not in text
    assert "| samples_per_problem | 3 |" in text and "| max_tokens_per_forward | 8 |" in text
    assert f"3 problems from `{data}` (content hash `{layout.file_hash(data)}`)" in text
    assert "kept solutions: 2 (right, finished, distinct) of 9 sampled (2 right), from 1 problems" in text


def test_sigterm_stops_a_command_like_ctrl_c(model_dirs, tmp_path, monkeypatch):
    """`kill` during a stage: exit 130, the stage's time so far is recorded, and a rerun resumes."""
    import os
    import signal

    from lightreasoner import evaluate

    run = tmp_path / "run"
    args = run_args(model_dirs, run, "--perplexity-problems", "0")
    real = evaluate.evaluate_model

    def killed(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)  # not reached: the signal interrupts first

    monkeypatch.setattr(evaluate, "evaluate_model", killed)
    before = signal.getsignal(signal.SIGTERM)
    assert cli_main(args) == 130
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is the command's only
    assert read_json(run / "eval" / "base" / ".started.json")["seconds"] > 0
    assert not (run / "eval" / "base" / "meta.json").exists()
    monkeypatch.setattr(evaluate, "evaluate_model", real)
    assert cli_main(args) == 0 and (run / "eval" / "tuned" / "meta.json").exists()


@pytest.mark.parametrize("command", [
    ["run", "--data", "generated"],
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
    assert "`sample`, `train`, `eval` and `sft`" in err
    assert [p.name for p in tmp_path.iterdir()] in ([], ["o"]) and not any(tmp_path.rglob("*.json*"))


def test_the_perplexity_curve_takes_only_the_scheduled_checkpoints(tmp_path):
    """A --stop-after leaves an extra checkpoint (step-000030 with --save-every 50): not a point of the curve."""
    from lightreasoner.pipeline import scheduled_checkpoints

    for step in (30, 50, 100, 150):
        (tmp_path / f"step-{step:06d}" / "adapter").mkdir(parents=True)
        if step != 150:  # 150: an unfinished checkpoint without its adapter
            (tmp_path / f"step-{step:06d}" / "adapter" / "adapter_config.json").write_text("{}")
    assert [s for _, s in scheduled_checkpoints(tmp_path, 50)] == [50, 100]
    assert scheduled_checkpoints(tmp_path, None) == []
