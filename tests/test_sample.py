"""The sampling stage: exactness of single-pass scoring, batching, resume, sharding, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightreasoner import sample as S
from lightreasoner import sampling as SA
from lightreasoner.cli import main as cli_main
from lightreasoner.contrast import reduce_step
from lightreasoner.models import LoadedModel, VocabMismatchError, check_vocab
from lightreasoner.problems import generate_problems
from lightreasoner.prompts import build_prompt_ids
from lightreasoner.testing import byte_tokenizer, tiny_causal_lm
from lightreasoner.utils import read_complete_jsonl

QUESTIONS = ["What is 3+4?", "A box holds 6 eggs. How many eggs are in 5 boxes?", "x", "Sara had 20 dollars."]
ROOT = Path(__file__).resolve().parents[1]


def prompts(tokenizer):
    return [build_prompt_ids(tokenizer, q) for q in QUESTIONS]


@pytest.mark.parametrize("mode", ["teacher-forced", "lockstep"])
def test_single_pass_scoring_equals_per_prefix_computation(expert, amateur, tokenizer, mode):
    params = SA.ScoringParams(max_new_tokens=12, amateur_pass=mode, beta=0.0)
    hooks = [dict(m.get_output_embeddings()._forward_pre_hooks) for m in (expert, amateur)]
    trajs = SA.sample_batch(expert, amateur, prompts(tokenizer), [256], 257, 320, params)
    # the decoders took their hooks away with them
    assert [dict(m.get_output_embeddings()._forward_pre_hooks) for m in (expert, amateur)] == hooks
    for p, tr in zip(prompts(tokenizer), trajs):
        for t in range(len(tr.completion)):
            # The authors' way: one full forward per prefix, no cache, read the last position.
            x = torch.tensor([p + tr.completion[:t]])
            with torch.no_grad():
                le, la = expert(x).logits[:, -1], amateur(x).logits[:, -1]
            assert tr.completion[t] == int(le.argmax())  # greedy
            red = reduce_step(le, la, params.alpha)
            assert tr.kl[t] == pytest.approx(float(red.kl[0]), abs=1e-4)
            assert tr.agree[t] == bool(red.top1_agree[0])
        kept = {s["pos"]: s for s in tr.steps}
        assert set(kept) == set(range(1, len(tr.completion)))  # beta 0: every step but t=0
        step = kept[3]
        x = torch.tensor([p + tr.completion[:3]])
        with torch.no_grad():
            red = reduce_step(expert(x).logits[:, -1], amateur(x).logits[:, -1], params.alpha)
        n = int((red.label_ids[0] >= 0).sum())
        assert step["token_ids"] == red.label_ids[0, :n].tolist()
        assert step["weights"] == pytest.approx(red.label_weights[0, :n].tolist(), abs=1e-5)
        assert sum(step["weights"]) == pytest.approx(1.0, abs=1e-4)


def test_batched_greedy_equals_one_problem_at_a_time(expert, amateur, tokenizer):
    params = SA.ScoringParams(max_new_tokens=16)
    batched = SA.sample_batch(expert, amateur, prompts(tokenizer), [256], 257, 320, params)
    for p, b in zip(prompts(tokenizer), batched):
        alone = SA.sample_batch(expert, amateur, [p], [256], 257, 320, params)[0]
        assert alone.completion == b.completion
        assert alone.kl == pytest.approx(b.kl, abs=1e-4)


def test_completion_stops_at_first_eos_and_keeps_it(tokenizer):
    model = tiny_causal_lm(seed=3)
    with torch.no_grad():
        model.lm_head.bias = None
        model.lm_head.weight[256] += 50.0 * model.lm_head.weight[65]  # make eos very likely somewhere
    params = SA.ScoringParams(max_new_tokens=40)
    trajs = SA.sample_batch(model, model, prompts(tokenizer), [256], 257, 320, params)
    for tr in trajs:
        assert 256 not in tr.completion[:-1]
        assert len(tr.kl) == len(tr.completion)
        assert all(abs(k) < 1e-5 for k in tr.kl)  # identical models never disagree
        assert tr.steps == [] or min(s["kl"] for s in tr.steps) >= params.beta


def test_larger_beta_keeps_a_subset_and_switches(expert, amateur, tokenizer):
    def kept(**kw):
        params = SA.ScoringParams(max_new_tokens=16, **kw)
        trajs = SA.sample_batch(expert, amateur, prompts(tokenizer), [256], 257, 320, params)
        return {(i, s["pos"]) for i, tr in enumerate(trajs) for s in tr.steps}, trajs

    lo, trajs = kept(beta=1.0)
    hi, _ = kept(beta=3.0)
    assert hi < lo and hi
    every, _ = kept(beta=100.0, selection=False)
    assert len(every) == sum(len(t.completion) - 1 for t in trajs)
    first, _ = kept(beta=0.0, include_first_step=True)
    assert any(pos == 0 for _, pos in first)
    _, plain = kept(beta=1.0, contrast=False)
    # Without contrast the label's top token is the expert's own top token.
    assert all(s["token_ids"][0] == s["expert_top"][0][0] for tr in plain for s in tr.steps)


def _run_sample(expert, amateur, tokenizer, problems, out, **kw):
    return S.sample_problems(expert, amateur, tokenizer, problems, out, params=SA.ScoringParams(max_new_tokens=10),
                             batch_size=2, progress=False, **kw)


def test_resume_after_a_kill_equals_an_uninterrupted_run(expert, amateur, tokenizer, tmp_path, monkeypatch):
    problems = generate_problems(7, seed=1)
    full = tmp_path / "full.jsonl"
    _run_sample(expert, amateur, tokenizer, problems, full)
    ref = full.read_text()
    assert len(read_complete_jsonl(full)) == 7

    # Kill (an exception) during the third batch, after two batches were written.
    part = tmp_path / "part.jsonl"
    real, calls = S.sample_batch, []

    def dying(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(S, "sample_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        _run_sample(expert, amateur, tokenizer, problems, part)
    monkeypatch.setattr(S, "sample_batch", real)
    assert len(read_complete_jsonl(part)) == 4
    # A kill mid-write leaves a torn line, and the batch half written.
    lines = part.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:3]) + lines[3][:25])
    _run_sample(expert, amateur, tokenizer, problems, part)
    assert part.read_text() == ref


def test_two_processes_equal_one(model_dirs, tmp_path):
    edir, adir = model_dirs
    base = [sys.executable, "-m", "lightreasoner", "sample", "--expert", edir, "--amateur", adir,
            "--max-problems", "5", "--batch-size", "2", "--max-new-tokens", "8", "--dtype", "float32",
            "--device", "cpu", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one" / "samples.jsonl"
    subprocess.run(base + ["--output", str(one)], check=True, env=env, cwd=tmp_path)
    two = tmp_path / "two" / "samples.jsonl"
    procs = [subprocess.Popen(base + ["--output", str(two)], cwd=tmp_path,
                              env={**env, "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r)})
             for r in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert two.read_text() == one.read_text()
    m1 = json.loads(S.manifest_path(one).read_text())
    m2 = json.loads(S.manifest_path(two).read_text())
    assert m1["counts"] == m2["counts"] and m2["complete"]
    assert len(m2["timings"]["per_rank"]) == 2
    assert not list(two.parent.glob("samples.rank*.jsonl"))


def test_cli_writes_records_manifest_reference_and_inspect(model_dirs, tmp_path, gsm8k_file, capsys):
    edir, adir = model_dirs
    out = tmp_path / "s.jsonl"
    args = ["sample", "--expert", edir, "--amateur", adir, "--data", str(gsm8k_file), "--output", str(out),
            "--max-new-tokens", "12", "--batch-size", "3", "--beta", "1.0", "--format", "reference", "--no-progress"]
    assert cli_main(args) == 0
    recs = read_complete_jsonl(out)
    assert [r["question"] for r in recs][:2] == [json.loads(l)["question"] for l in
                                                 gsm8k_file.read_text().splitlines()[:2]]
    m = json.loads(S.manifest_path(out).read_text())
    assert m["complete"] and m["counts"]["problems"] == 5
    assert m["counts"]["kept_steps"] == sum(len(r["steps"]) for r in recs) > 0
    assert m["config"]["beta"] == 1.0 and m["expert"]["fingerprint"].startswith("sha256:")
    assert set(m["timings"]) >= {"generation_s", "scoring_s", "wall_s"}
    for r in recs:
        assert len(r["kl"]) == len(r["completion_ids"]) == len(r["top1_agree"])
        for s in r["steps"]:
            assert s["kl"] >= 1.0 and s["pos"] >= 1 and len(s["expert_top"]) == 5
    ref = read_complete_jsonl(tmp_path / "s.reference.jsonl")
    assert len(ref) == m["counts"]["kept_steps"]
    assert set(ref[0]) == {"prompt_id", "step", "prefix", "tokens", "token_ids", "weights", "kl_divergence"}
    # Running again finds the output complete and leaves it as it is.
    before = out.read_text()
    assert cli_main(args) == 0 and out.read_text() == before
    capsys.readouterr()
    assert cli_main(["inspect", "--samples", str(out), "--limit", "2", "--min-kl", "1.5"]) == 0
    shown = capsys.readouterr().out
    assert shown.count("KL ") == 2 and "expert :" in shown and "label  :" in shown


def test_bad_rows_name_file_and_line_and_can_be_skipped(model_dirs, tmp_path, capsys):
    edir, adir = model_dirs
    data = tmp_path / "p.jsonl"
    data.write_text('{"question": "What is 1+1?"}\n{"question": "oops"\n{"text": "no question"}\n'
                    '{"question": "What is 2+2?"}\n')
    out = tmp_path / "s.jsonl"
    args = ["sample", "--expert", edir, "--amateur", adir, "--data", str(data), "--output", str(out),
            "--max-new-tokens", "4", "--no-progress"]
    assert cli_main(args) == 2
    assert f"{data}:2" in capsys.readouterr().err
    assert not out.exists()
    assert cli_main(args + ["--skip-bad-rows"]) == 0
    m = json.loads(S.manifest_path(out).read_text())
    assert m["counts"]["problems"] == 2 and m["counts"]["bad_rows_skipped"] == 2


def test_config_errors_are_reported_together(capsys):
    assert cli_main(["sample", "--output", "x.txt", "--alpha", "2", "--beta", "abc"]) == 2
    err = capsys.readouterr().err
    assert "--alpha" in err and "--beta" in err and "--output" in err


def test_mismatched_vocabularies_are_an_error_unless_allowed(expert, amateur, tokenizer):
    e = LoadedModel(expert, tokenizer, "tiny-expert", "x")
    assert check_vocab(e, LoadedModel(amateur, tokenizer, "same-tokenizer", "z")) == 320
    tok_e, tok_a = byte_tokenizer(), byte_tokenizer()
    tok_e.add_tokens(["<a>"])
    tok_a.add_tokens(["<b>"])  # same size, different token at id 259
    e_mis, a_mis = LoadedModel(expert, tok_e, "tiny-expert", "x"), LoadedModel(amateur, tok_a, "tiny-amateur", "y")
    with pytest.raises(VocabMismatchError) as err:
        check_vocab(e_mis, a_mis)
    msg = str(err.value)
    assert "tiny-expert" in msg and "tiny-amateur" in msg and "id 259" in msg and "--allow-vocab-mismatch" in msg
    assert check_vocab(e_mis, a_mis, allow_mismatch=True) == 259
