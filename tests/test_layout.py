"""A stage's time across attempts (layout.StageRun): kept in .started.json while it works, summed in meta.json."""

import os
import subprocess
import sys
import time

import pytest

from lightreasoner import layout
from lightreasoner.utils import InputError, read_json

IDENT = layout.identity("demo", {"n": 1}, {})


def finish(folder):
    with layout.StageRun(folder, IDENT) as stage:
        stage.start()
        time.sleep(0.1)
        return stage.finish(config={}, counts={})


@pytest.fixture
def fast_beat(monkeypatch):
    monkeypatch.setattr(layout, "HEARTBEAT_S", 0.05)


def test_an_attempt_killed_outright_keeps_its_time_up_to_one_beat(tmp_path):
    """kill -9 runs no handler: the heartbeat's last record is what the next attempt counts."""
    killed = f"""
import os, signal, time
from lightreasoner import layout
layout.HEARTBEAT_S = 0.05
stage = layout.StageRun({str(tmp_path)!r}, layout.identity("demo", {{"n": 1}}, {{}}))
stage.start()
time.sleep(1.0)
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", killed], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == -9
    assert not (tmp_path / layout.META).exists()
    recorded = read_json(tmp_path / layout.STARTED)["seconds"]
    assert 0.8 <= recorded <= 1.5, recorded
    meta = finish(tmp_path)
    assert meta["seconds"] >= recorded + 0.1


def test_an_attempt_that_fails_records_all_its_time_and_the_next_adds_its_own(tmp_path, fast_beat):
    with pytest.raises(RuntimeError):
        with layout.StageRun(tmp_path, IDENT) as stage:
            stage.start()
            time.sleep(0.3)
            raise RuntimeError("cut")
    first = read_json(tmp_path / layout.STARTED)["seconds"]
    assert first >= 0.3
    assert finish(tmp_path)["seconds"] >= first + 0.1
    time.sleep(0.2)  # the heartbeat is stopped: nothing recreates .started.json after meta.json
    assert not (tmp_path / layout.STARTED).exists()


def test_a_stop_without_an_exception_also_records_its_time(tmp_path, fast_beat):
    """A stage that returns unfinished (e.g. train --stop-after) leaves its time for the next attempt."""
    with layout.StageRun(tmp_path, IDENT) as stage:
        stage.start()
        time.sleep(0.2)
    assert read_json(tmp_path / layout.STARTED)["seconds"] >= 0.2


def test_only_the_writer_records_the_folders_time(tmp_path, fast_beat):
    """Under several processes the others leave .started.json alone (their time is the writer's too)."""
    main_rank = layout.StageRun(tmp_path, IDENT)
    main_rank.start()
    main_rank._stop_heartbeat()
    with pytest.raises(RuntimeError):
        with layout.StageRun(tmp_path, IDENT, writer=False):
            time.sleep(0.2)
            raise RuntimeError("cut")
    assert read_json(tmp_path / layout.STARTED).get("seconds", 0.0) < 0.2


def test_a_rerun_clears_the_old_outputs_only_once_the_stage_starts_writing(tmp_path):
    """--rerun over other settings' folder: inputs that fail their checks (before start) lose nothing."""
    finish(tmp_path)
    (tmp_path / "adapter.bin").write_text("the old run's work")
    other = layout.identity("demo", {"n": 2}, {})
    with pytest.raises(InputError, match="bad row"):
        with layout.StageRun(tmp_path, other, rerun=True) as stage:
            assert stage.state.status == "changed" and not stage.done
            raise InputError("data.jsonl:3: bad row")  # an input check, before start()
    assert (tmp_path / "adapter.bin").exists() and read_json(tmp_path / layout.META)["fingerprint"] \
        == layout.fingerprint(IDENT)  # the old stage intact, its time untouched
    with layout.StageRun(tmp_path, other, rerun=True, keep=("*.keep",)) as stage:
        (tmp_path / "records.keep").write_text("checked by the stage itself")
        stage.start()
        assert sorted(p.name for p in tmp_path.iterdir()) == [layout.STARTED, "records.keep"]
        stage.finish(config={}, counts={})
    assert layout.stage_state(tmp_path, other).status == "done"
    partial = tmp_path / "partial"  # an unfinished attempt of other settings keeps its own time too
    with layout.StageRun(partial, IDENT) as stage:
        stage.start()
    seconds = read_json(partial / layout.STARTED)["seconds"]
    with pytest.raises(InputError):
        with layout.StageRun(partial, other, rerun=True):
            time.sleep(0.05)
            raise InputError("data.jsonl:3: bad row")
    assert read_json(partial / layout.STARTED)["seconds"] == seconds


def test_sample_with_bad_data_and_rerun_keeps_the_old_folder(tmp_path):
    from lightreasoner.sample import SampleConfig, main

    out = tmp_path / "sample"
    out.mkdir()
    (out / "meta.json").write_text('{"fingerprint": "sha256:other", "identity": {"stage": "sample"}}')
    (out / "samples.jsonl").write_text('{"id": "kept"}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1 + 1?"}\n{"no question here": 1}\n')
    with pytest.raises(InputError, match="bad.jsonl"):
        main(SampleConfig(expert="e", amateur="a", data=str(bad), output=str(out / "samples.jsonl"), rerun=True))
    assert (out / "samples.jsonl").read_text() == '{"id": "kept"}\n' and (out / "meta.json").exists()


def test_a_home_relative_path_is_fingerprinted_as_the_file_it_names(tmp_path, monkeypatch):
    """``~/...`` (from YAML, ``--flag=~/...`` or the Python API, where no shell expands it) names a file: its
    fingerprint is that file's, and follows its content."""
    from lightreasoner.evaluate import file_fingerprint
    from lightreasoner.train import samples_input

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "s.jsonl").write_text('{"id": 1}\n')
    assert samples_input("~/s.jsonl") == layout.file_hash(tmp_path / "s.jsonl")
    adapter = tmp_path / "ad"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    before = file_fingerprint("~/ad")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    assert file_fingerprint("~/ad") == file_fingerprint(adapter) != before  # the weights are counted
    finish(adapter)
    assert layout.output_fingerprint("~/ad") == layout.read_meta(adapter)["fingerprint"]


def test_an_unfinished_stage_resumes_only_where_its_settings_resolve_alike(tmp_path):
    """--dtype auto is bf16 on one machine, float32 on another: their records must not meet in one folder."""
    with layout.StageRun(tmp_path, IDENT) as stage:
        stage.start(resolved={"dtype": "bfloat16"})
    with layout.StageRun(tmp_path, IDENT) as stage:  # the same machine: resumes
        stage.start(resolved={"dtype": "bfloat16"})
    with pytest.raises(InputError, match=r"dtype bfloat16 there, float32 here.*hardware that started it"):
        with layout.StageRun(tmp_path, IDENT) as stage:
            stage.start(resolved={"dtype": "float32"})
    assert finish(tmp_path)["fingerprint"] == layout.fingerprint(IDENT)  # nothing was lost
