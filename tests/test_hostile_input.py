"""Hostile and broken input (issue 12): one writer per output, finite numbers, clear errors before any work,
resume that neither drops nor reorders a record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lightreasoner import cli
from lightreasoner.benchmarks import load_benchmark
from lightreasoner.config import ConfigError, resolve
from lightreasoner.models import ModelSpecError, check_device, resolve_source
from lightreasoner.problems import load_problems
from lightreasoner.utils import (InputError, JsonlAppender, iter_jsonl, lock_path, output_lock, read_complete_jsonl,
                                 truncate_torn_tail)

SRC = Path(__file__).resolve().parents[1] / "src"


def hold_lock(path: Path, ready: Path) -> subprocess.Popen:
    """Another process holding ``output_lock(path)`` until it is killed."""
    code = (f"import time; from pathlib import Path; from lightreasoner.utils import output_lock\n"
            f"with output_lock({str(path)!r}, 'sample'):\n"
            f"    Path({str(ready)!r}).write_text('1')\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(SRC)})
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the lock holder did not start"
        time.sleep(0.05)
    return proc


# ------------------------------------------------------------------------------------------ one writer per output


def test_a_second_writer_stops_at_once_naming_the_first_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run" / "samples.jsonl"
    holder = hold_lock(out, tmp_path / "ready")
    try:
        t0 = time.monotonic()
        with pytest.raises(InputError, match=rf"being written by `lightreasoner sample` \(pid {holder.pid} "):
            with output_lock(out, "sample"):
                pass
        assert time.monotonic() - t0 < 5
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with output_lock(out, "sample"):  # the kernel released the dead holder's flock
        assert str(os.getpid()) in lock_path(out).read_text()


def test_the_cli_refuses_a_locked_output_before_reading_anything(tmp_path, capsys):
    out = tmp_path / "samples.jsonl"
    holder = hold_lock(out, tmp_path / "ready")
    try:
        rc = cli.main(["sample", "--output", str(out), "--data", str(tmp_path / "missing.jsonl"),
                       "--expert", "no/such-model", "--amateur", "no/such-model"])
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert rc == 2 and f"pid {holder.pid}" in err and "missing.jsonl" not in err
    assert not out.exists()


def test_an_output_of_the_wrong_kind_is_refused_before_work(tmp_path, capsys):
    (tmp_path / "dir.jsonl").mkdir()
    rc = cli.main(["sample", "--output", str(tmp_path / "dir.jsonl"), "--data", "nowhere.jsonl"])
    assert rc == 2 and "is a folder; give a file path" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    rc = cli.main(["eval", "--model", "nowhere", "--output", str(tmp_path / "afile")])
    assert rc == 2 and "is a file; give a folder path" in capsys.readouterr().err
    rc = cli.main(["eval", "--model", "nowhere", "--output", str(tmp_path / "afile" / "sub")])
    assert rc == 2 and "cannot write next to" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ numbers and options


@pytest.mark.parametrize("cls_path, flag, value", [
    ("lightreasoner.train:TrainConfig", "lr", "inf"), ("lightreasoner.train:TrainConfig", "lora_alpha", "nan"),
    ("lightreasoner.sample:SampleConfig", "beta", "nan"), ("lightreasoner.sample:SampleConfig", "beta", "inf"),
    ("lightreasoner.evaluate:EvalConfig", "grade_timeout", "inf"),
    ("lightreasoner.train:TrainConfig", "max_grad_norm", "-inf")])
def test_non_finite_numbers_are_refused_by_name(cls_path, flag, value):
    import importlib

    module, name = cls_path.split(":")
    cls = getattr(importlib.import_module(module), name)
    base = {"samples": "s.jsonl", "output": "out", "model": "m"}
    fields = {f for f in cls.__dataclass_fields__}
    with pytest.raises(ConfigError) as e:
        resolve(cls, cli={**{k: v for k, v in base.items() if k in fields}, flag: value})
    assert f"--{flag.replace('_', '-')} must be a finite number, got '{value}'" in str(e.value)


def test_yaml_nan_is_refused_too(tmp_path):
    from lightreasoner.sample import SampleConfig

    with pytest.raises(ConfigError, match="--alpha must be a finite number"):
        resolve(SampleConfig, yaml_values={"alpha": float("nan"), "output": "x.jsonl"})


# ------------------------------------------------------------------------------------------ files


def test_non_utf8_bytes_name_the_file_and_line_and_can_be_skipped(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_bytes(b'{"question": "ok one"}\n{"question": "bad \xff\xfe"}\n{"question": "ok two"}\n')
    with pytest.raises(InputError, match=rf"{f}:2: not UTF-8 text"):
        list(iter_jsonl(f))
    stats: dict = {}
    assert [n for n, _ in iter_jsonl(f, skip_bad=True, stats=stats)] == [1, 3] and stats["bad_rows"] == 1
    problems = load_problems(str(f), skip_bad_rows=True, stats={})
    assert [p.question for p in problems] == ["ok one", "ok two"]
    with pytest.raises(InputError, match=":2: not UTF-8"):
        load_problems(str(f))


def test_a_last_record_that_lost_only_its_newline_is_kept_in_place_on_resume(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_text('{"id": "a"}\n{"id": "b"}')  # a kill after the record, before its newline reached the disk
    assert [r["id"] for r in read_complete_jsonl(f)] == ["a", "b"]
    with JsonlAppender(f) as app:
        app.write_many([{"id": "c"}])
    assert [r["id"] for r in read_complete_jsonl(f)] == ["a", "b", "c"]
    assert f.read_text() == '{"id": "a"}\n{"id": "b"}\n{"id": "c"}\n'


def test_a_torn_last_record_is_dropped_and_cut(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_text('{"id": "a"}\n{"id": "b", "x": [1, 2')
    assert [r["id"] for r in read_complete_jsonl(f)] == ["a"]
    truncate_torn_tail(f)
    assert f.read_text() == '{"id": "a"}\n'


# ------------------------------------------------------------------------------------------ models and devices


def test_a_mistyped_local_path_is_no_such_folder_not_a_hub_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for spec in ("runs/mergd", "./merged", "runs/x/merged", "/nowhere/at/all", "has space"):
        with pytest.raises(ModelSpecError, match="no such folder"):
            resolve_source(spec, prepare=False)
    assert resolve_source("Qwen/Qwen2.5-0.5B", prepare=False).kind == "hub"  # shaped like a hub id, no local parent


def test_bad_devices_are_named():
    with pytest.raises(InputError, match="not a device torch knows"):
        check_device("gpu0")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no cuda device on this machine"):
            check_device("cuda")
    assert check_device("cpu") == "cpu"


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    from lightreasoner import grade

    def boom(cfg):
        raise KeyError("surprise")

    monkeypatch.setattr(grade, "grade_main", boom)
    args = ["grade", "--benchmark", "gsm8k", "--input", "a.jsonl", "--output", "b.jsonl"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "internal error: KeyError" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(KeyError):
        cli.main(["--debug"] + args)


# ------------------------------------------------------------------------------------------ benchmark rows


def write_bench(root: Path, rows: list) -> Path:
    (root / "gsm8k").mkdir(parents=True, exist_ok=True)
    (root / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


GOOD = {"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"}


@pytest.mark.parametrize("rows, message", [
    ([GOOD, {"question": "No gold here"}, GOOD], r"test.jsonl:2: no usable question or gold"),
    ([{**GOOD, "idx": 0}, GOOD], r"test.jsonl:2: this row has no idx but others do"),
    ([{**GOOD, "idx": 3}, {**GOOD, "idx": 3}], r"test.jsonl:2: idx 3 is also on line 1"),
    ([{**GOOD, "idx": "x"}], r"test.jsonl:1: idx must be an integer"),
    ([GOOD, [1, 2]], r"test.jsonl:2: expected a JSON object")])
def test_bad_benchmark_rows_are_refused_up_front_with_file_and_line(tmp_path, rows, message):
    root = write_bench(tmp_path / "data", rows)
    with pytest.raises(InputError, match=message):
        load_benchmark("gsm8k", root)


def test_skip_bad_rows_skips_and_counts_them(tmp_path):
    root = write_bench(tmp_path / "data", [GOOD, {"question": "No gold"}, {"answer": "#### 3"}, GOOD])
    stats: dict = {}
    rows = load_benchmark("gsm8k", root, skip_bad_rows=True, stats=stats)
    # a row with a gold but no question stays: the toolkit skips it later as an empty question
    assert [r.get("question") for r in rows] == [GOOD["question"], None, GOOD["question"]] and stats["bad_rows"] == 1


def test_eval_refuses_bad_rows_before_loading_the_model(tmp_path, capsys, monkeypatch):
    from lightreasoner import models

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(models, "load_model", no_load)
    root = write_bench(tmp_path / "data", [GOOD, {"question": "No gold"}])
    rc = cli.main(["eval", "--model", "Qwen/Qwen2.5-0.5B", "--output", str(tmp_path / "out"), "--data-dir",
                   str(root), "--benchmarks", "gsm8k"])
    err = capsys.readouterr().err
    assert rc == 2 and "test.jsonl:2" in err and "--skip-bad-rows" in err


def test_eval_refuses_an_adapter_trained_on_another_model(tmp_path, model_dirs, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "summary.json").write_text(json.dumps({"expert": {"fingerprint": "sha256:someone-else"}}))
    root = write_bench(tmp_path / "data", [GOOD])
    rc = cli.main(["eval", "--model", model_dirs[0], "--adapter", str(adapter), "--output", str(tmp_path / "o"),
                   "--data-dir", str(root), "--benchmarks", "gsm8k", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "was trained on the model sha256:someone-else" in err
    assert not (tmp_path / "o" / "config.json").exists()


# ------------------------------------------------------------------------------------------ ordinary mistakes


def _bad_utf8(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b'{"question": "caf\xe9"}\n')
    return path


MISTAKES = {
    "missing data file": (["sample", "--data", "{t}/nope.jsonl", "--output", "{t}/s/samples.jsonl"], "nope.jsonl"),
    "non-UTF-8 data": (["sample", "--data", "{bad}", "--output", "{t}/s/samples.jsonl", "--skip-bad-rows",
                        "--max-problems", "1"], "no problems to sample"),
    "non-UTF-8 data, strict": (["sample", "--data", "{bad}", "--output", "{t}/s/samples.jsonl"], "bad.jsonl:1"),
    "missing samples": (["train", "--samples", "{t}/nope.jsonl", "--output", "{t}/tr"], "nope.jsonl"),
    "non-UTF-8 samples": (["train", "--samples", "{bad}", "--output", "{t}/tr"], "bad.jsonl:1"),
    "mistyped model path": (["eval", "--model", "{t}/merged", "--output", "{t}/ev"], "no such folder"),
    "mistyped expert path": (["train", "--samples", "{bad}", "--expert", "runs/mergd", "--output", "{t}/tr"],
                             "no such folder"),
    "non-UTF-8 benchmark": (["eval", "--model", "Qwen/Qwen2.5-0.5B", "--output", "{t}/ev", "--data-dir",
                             "{t}/bench", "--benchmarks", "gsm8k"], "test.jsonl:1"),
    "missing grade input": (["grade", "--benchmark", "gsm8k", "--input", "{t}/nope.jsonl", "--output",
                             "{t}/g.jsonl"], "nope.jsonl"),
    "non-UTF-8 grade input": (["grade", "--benchmark", "gsm8k", "--input", "{bad}", "--output", "{t}/g.jsonl"],
                              "bad.jsonl:1"),
    "missing run folder for report": (["report", "{t}/norun"], "norun"),
    "missing samples for inspect": (["inspect", "--samples", "{t}/nope.jsonl"], "nope.jsonl"),
    "compare of missing runs": (["eval", "--compare", "{t}/a,{t}/b"], "is not a folder"),
    "missing config file": (["run", "--config", "{t}/nope.yaml"], "nope.yaml"),
    "non-UTF-8 config": (["run", "--config", "{bad_yaml}"], "bad.yaml"),
    "config of the wrong shape": (["run", "--config", "{list_yaml}"], "list.yaml"),
    "not a number": (["train", "--samples", "s", "--output", "o", "--lr", "fast"], "--lr expects a number"),
}


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_an_ordinary_mistake_is_one_clear_line(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    bad = _bad_utf8(tmp_path / "bad.jsonl")
    _bad_utf8(tmp_path / "bench" / "gsm8k" / "test.jsonl")
    (tmp_path / "bad.yaml").write_bytes(b"output: caf\xe9\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    args, needle = MISTAKES[name]
    subst = {"t": str(tmp_path), "bad": str(bad), "bad_yaml": str(tmp_path / "bad.yaml"),
             "list_yaml": str(tmp_path / "list.yaml")}
    rc = cli.main([a.format(**subst) for a in args])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert needle in err and "Traceback" not in err and "internal error" not in err, err


def test_train_refuses_samples_whose_sampling_has_not_finished(tmp_path, model_dirs, capsys):
    edir, adir = model_dirs
    samples = tmp_path / "s" / "samples.jsonl"
    assert cli.main(["sample", "--expert", edir, "--amateur", adir, "--data", "generated", "--max-problems", "2",
                     "--max-new-tokens", "4", "--output", str(samples), "--device", "cpu", "--no-progress"]) == 0
    (samples.parent / "meta.json").rename(samples.parent / ".started.json")  # as a killed sampling run leaves it
    capsys.readouterr()
    rc = cli.main(["train", "--samples", str(samples), "--expert", edir, "--output", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert rc == 2 and "did not finish" in err and ".started.json" in err
    assert not (tmp_path / "t" / "meta.json").exists()
