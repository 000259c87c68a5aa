"""Sharded stages (issue 14): the split/merge helpers of lightreasoner.shards, `eval` and `sft`'s sampling split
across ranks (in one process, rank by rank; and `eval` under a real `torchrun`) giving exactly the one-process
files, and a killed rank resuming its own shard."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightreasoner import evaluation as EV
from lightreasoner import sft
from lightreasoner import shards as S
from lightreasoner.problems import Problem
from lightreasoner.testing import byte_tokenizer, gsm8k_style_rows, tiny_causal_lm
from lightreasoner.utils import DistInfo, read_json

FAST = {"max_new_tokens": 12, "batch_size": 4, "dtype": "float32", "device": "cpu"}
TIMING = {"seconds", "generation_seconds", "tokens_per_second", "wall_seconds",
          "time_use_in_second", "time_use_in_minite"}  # the last two: the toolkit metrics' (its spelling)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def without_timing(value):
    """Records or summaries with their wall-clock fields left out (they differ between any two runs)."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def write_lines(path: Path, records: list[dict], tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


# ------------------------------------------------------------------------------------------------ the helpers


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_every_unit_has_one_rank_fixed_by_its_index(world):
    units = [f"u{i}" for i in range(11)]
    parts = [S.share(units, r, world) for r in range(world)]
    assert sorted(u for p in parts for u in p) == sorted(units)  # each unit once
    for r, part in enumerate(parts):
        assert part == [u for i, u in enumerate(units) if i % world == r]  # in order, by index alone
        assert all(S.owner(units.index(u), world) == r for u in part)
    assert S.share(units[:7], 1, world) == [u for u in S.share(units, 1, world) if int(u[1:]) < 7]  # a prefix's
    # shares are the prefixes of the shares: a larger selection never moves a unit to another rank


def test_shard_files_are_this_outputs_shards_only(tmp_path):
    out = tmp_path / "gsm8k.jsonl"
    for name in ("gsm8k.rank0.jsonl", "gsm8k.rank10.jsonl", "gsm8k.rank2.jsonl", "gsm8k.extra.jsonl",
                 "gsm8k.rank1.done.json", "math.rank0.jsonl", "gsm8k.rankx.jsonl", "gsm8k_b.rank0.jsonl"):
        (tmp_path / name).write_text("")
    assert S.shard_path(out, 3) == tmp_path / "gsm8k.rank3.jsonl"
    assert S.mark_path(out, 3) == tmp_path / "gsm8k.rank3.done.json"
    assert [p.name for p in S.shard_files(out)] == ["gsm8k.rank0.jsonl", "gsm8k.rank2.jsonl", "gsm8k.rank10.jsonl"]
    S.remove_shards(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gsm8k.extra.jsonl", "gsm8k.rankx.jsonl",
                                                          "gsm8k_b.rank0.jsonl", "math.rank0.jsonl"]


def test_written_reads_another_ranks_shard_only_as_far_as_it_is_written(tmp_path):
    out = tmp_path / "c.jsonl"
    write_lines(S.shard_path(out, 0), [{"id": "a"}], tail='{"id": "b"}')  # own shard: a whole last record
    write_lines(S.shard_path(out, 1), [{"id": "c"}], tail='{"id": "d"')  # rank 1 is writing this line now
    write_lines(out, [{"id": "e", "v": 1}])
    write_lines(tmp_path / "old.jsonl", [{"id": "e", "v": 0}, {"id": "f"}])
    found = S.written(out, 0, 2, also=[tmp_path / "old.jsonl"])
    assert sorted(found) == ["a", "b", "c", "e", "f"] and found["e"]["v"] == 1  # the later source wins
    assert "b" not in S.written(out, 1, 2)  # for rank 1, rank 0's unterminated line is not written yet


def test_merge_orders_dedupes_keeps_leftovers_and_removes_shards(tmp_path):
    out, extra = tmp_path / "b.jsonl", tmp_path / "b.extra.jsonl"
    write_lines(out, [{"id": "3"}])  # e.g. an earlier one-process attempt
    write_lines(S.shard_path(out, 0), [{"id": "2"}, {"id": "0"}])
    write_lines(S.shard_path(out, 1), [{"id": "1"}, {"id": "3"}, {"id": "9"}])
    write_lines(S.shard_path(out, 4), [{"id": "4"}])  # a shard of an attempt with more ranks
    S.mark_done(out, 1, ["1", "3"])
    records = S.merge_shards(out, ["0", "1", "2", "3", "4", "5"], leftovers=extra)
    assert [r["id"] for r in records] == ["0", "1", "2", "3", "4"]  # "5" was found nowhere: absent
    assert lines(out) == records and lines(extra) == [{"id": "9"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.extra.jsonl", "b.jsonl"]
    S.merge_shards(out, ["0", "1", "2", "3", "4", "9"], leftovers=extra)
    assert not extra.exists() and [r["id"] for r in lines(out)] == ["0", "1", "2", "3", "4", "9"]


def test_marks_of_another_share_are_not_taken(tmp_path):
    out = tmp_path / "b.jsonl"
    S.mark_done(out, 1, ["1", "3"], wall_seconds=2.5)
    with pytest.raises(TimeoutError, match="finish their shares"):
        S.wait_for_marks(out, {1: ["1", "3", "5"]}, timeout_s=0)  # a larger selection: rank 1 owes "5"
    marks = S.wait_for_marks(out, {1: ["1", "3"]}, timeout_s=0)
    assert marks[1]["ids"] == 2 and marks[1]["wall_seconds"] == 2.5


def test_ranks_share_the_cores_and_say_so(monkeypatch, caplog):
    before = torch.get_num_threads()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    try:
        with caplog.at_level(logging.INFO, logger="lightreasoner.shards"):
            assert S.share_cores(DistInfo(3, 4, 1)) == 4 and torch.get_num_threads() == 4
        assert "rank 3 of 4: 4 torch threads (8 cores / 2 processes on this machine)" in caplog.text
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
        assert S.share_cores(DistInfo(0, 16, 0)) == 1  # never 0
        torch.set_num_threads(3)
        assert S.share_cores(DistInfo(0, 1, 0)) == 3  # one process: left alone
    finally:
        torch.set_num_threads(before)
    assert S.rank_device("cuda", DistInfo(1, 2, 1)) == "cuda:1" and S.rank_device("cpu", DistInfo(1, 2, 1)) == "cpu"


# ------------------------------------------------------------------------------------------------ eval, rank by rank


@pytest.fixture
def rows() -> list[dict]:
    extra = [{"question": f"What is {a} plus {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
             for a, b in ((2, 2), (7, 5))]
    return gsm8k_style_rows() + extra  # 7 problems: unequal shares


PARAMS = EV.EvalParams(max_new_tokens=12, batch_size=4)


def sharded(model, tokenizer, rows, path: Path, world: int, order=None) -> dict:
    """Evaluate ``rows`` as ``world`` ranks would (rank by rank, in ``order``), then rank 0's merge."""
    for r in order or reversed(range(world)):
        EV.evaluate_model(model, tokenizer, "gsm8k", rows, PARAMS, path, rank=r, world_size=world, progress=False)
    summary, marks = EV.collect("gsm8k", rows, tokenizer, PARAMS, path, world)
    assert sorted(marks) == list(range(world))
    return summary


def test_sharded_evaluation_writes_the_one_process_file(tmp_path, expert, tokenizer, rows):
    one = EV.evaluate_model(expert, tokenizer, "gsm8k", rows, PARAMS, tmp_path / "1.jsonl",
                            progress=False)
    for world in (2, 3):
        path = tmp_path / f"w{world}" / "gsm8k.jsonl"
        path.parent.mkdir()
        summary = sharded(expert, tokenizer, rows, path, world)
        assert without_timing(lines(path)) == without_timing(lines(tmp_path / "1.jsonl"))
        assert [r["id"] for r in lines(path)] == [str(i) for i in range(len(rows))]
        assert without_timing(summary) == without_timing(one)
        assert [p.name for p in path.parent.iterdir()] == ["gsm8k.jsonl"]  # shards and marks removed


def test_a_killed_rank_continues_its_own_shard(tmp_path, expert, tokenizer, rows, monkeypatch):
    ref = EV.evaluate_model(expert, tokenizer, "gsm8k", rows, PARAMS, tmp_path / "1.jsonl",
                            progress=False)["records"]
    path = tmp_path / "run" / "gsm8k.jsonl"
    path.parent.mkdir()
    real, decoded = EV.iter_generate, []

    def killed_after_one(model, tok, prompts, **kw):
        for idx, outs, secs in real(model, tok, prompts, **kw):
            yield idx[:1], outs[:1], secs
            raise KeyboardInterrupt

    def counted(model, tok, prompts, **kw):
        decoded.append(len(prompts))
        return real(model, tok, prompts, **kw)

    monkeypatch.setattr(EV, "iter_generate", killed_after_one)
    with pytest.raises(KeyboardInterrupt):  # rank 1 (problems 1, 3, 5) is killed after its first record
        EV.evaluate_model(expert, tokenizer, "gsm8k", rows, PARAMS, path, rank=1,
                          world_size=2, progress=False)
    first = lines(S.shard_path(path, 1))
    assert len(first) == 1 and first[0]["id"] in {"1", "3", "5"}
    with S.shard_path(path, 1).open("a") as fh:
        fh.write('{"id": "3", "prom')  # and torn mid-line
    monkeypatch.setattr(EV, "iter_generate", counted)
    summary = sharded(expert, tokenizer, rows, path, 2, order=[1, 0])
    assert decoded == [2, 4]  # rank 1 decoded only its two missing problems; rank 0 its four
    assert lines(path)[int(first[0]["id"])] == first[0]  # the record written before the kill is the one kept
    assert without_timing(lines(path)) == without_timing(ref)
    assert summary["n"] == len(rows) and summary["correct"] == sum(r["correct"] for r in ref)


# ------------------------------------------------------------------------------------------------ sft's sampling


def test_sharded_sft_sampling_writes_the_one_process_candidates(tmp_path, expert, tokenizer):
    problems = [Problem(id=f"p{i}", question=r["question"], answer=r["answer"].split("####")[-1].strip())
                for i, r in enumerate(gsm8k_style_rows())]
    kw = dict(k=3, temperature=0.7, max_new_tokens=8, batch_size=4, seed=1, progress=False)
    one = tmp_path / "one" / "candidates.jsonl"
    sft.sample_candidates(expert, tokenizer, problems, one, **kw)
    assert sft.collect_candidates(one, problems, 3) == {}
    assert [c["id"] for c in lines(one)] == sft.candidate_ids(problems, 3)  # problem order, whatever finished first
    two = tmp_path / "two" / "candidates.jsonl"
    for r in (1, 0):
        sft.sample_candidates(expert, tokenizer, problems, two, rank=r, world_size=2, **kw)
    assert {r["problem_id"] for r in lines(S.shard_path(two, 1))} == {"p1", "p3"}
    marks = sft.collect_candidates(two, problems, 3, world_size=2)
    assert [m["samples"] for m in marks.values()] == [9, 6]
    assert two.read_bytes() == one.read_bytes()
    assert [p.name for p in two.parent.iterdir()] == ["candidates.jsonl"]


# ------------------------------------------------------------------------------------------------ eval under torchrun


def eval_argv(model: Path, data: Path, out: Path) -> list[str]:
    return ["-m", "lightreasoner", "eval", "--model", str(model), "--data-dir", str(data), "--benchmarks", "gsm8k",
            "--output", str(out)] + [x for k, v in FAST.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def test_eval_under_torchrun_equals_one_process(tmp_path, rows):
    """The acceptance test of issue 14: `torchrun --nproc-per-node 2 -m lightreasoner eval` writes the records and
    summary of a one-process run (a float32 tiny model, CPU)."""
    model = tmp_path / "model"
    tiny_causal_lm(seed=1, dtype=torch.float32).save_pretrained(model)
    byte_tokenizer().save_pretrained(model)
    data = tmp_path / "data"
    (data / "gsm8k").mkdir(parents=True)
    write_lines(data / "gsm8k" / "test.jsonl", rows)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    done = subprocess.run([sys.executable, *eval_argv(model, data, one)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-6000:]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(launch + eval_argv(model, data, two), env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-6000:]
    assert re.search(r"rank 1 of 2: \d+ torch threads \(\d+ cores / 2 processes", done.stderr)
    assert without_timing(lines(two / "gsm8k.jsonl")) == without_timing(lines(one / "gsm8k.jsonl"))
    assert without_timing(read_json(two / "summary.json")) == without_timing(read_json(one / "summary.json"))
    meta = read_json(two / "meta.json")
    assert meta["fingerprint"] == read_json(one / "meta.json")["fingerprint"]
    assert [(m["rank"], m["records"]) for m in meta["per_rank"]["gsm8k"]] == [(0, 4), (1, 3)]
    assert not list(two.glob("*.rank*"))
    # The toolkit-format files too: the same files, the per-sample lines byte for byte, the same metrics.
    assert toolkit_files(two) == toolkit_files(one) and len(toolkit_files(one)) == 2
    for name in toolkit_files(one):
        a, b = one / "toolkit" / name, two / "toolkit" / name
        if name.endswith("_metrics.json"):
            assert without_timing(read_json(b)) == without_timing(read_json(a))
            assert read_json(a)["num_samples"] == 7
        else:
            assert b.read_bytes() == a.read_bytes() and [r["idx"] for r in lines(a)] == list(range(7))


def toolkit_files(out: Path) -> list[str]:
    """The toolkit-format files of an eval output folder, relative to OUTPUT/toolkit/."""
    return sorted(str(p.relative_to(out / "toolkit")) for p in (out / "toolkit").rglob("*") if p.is_file())
