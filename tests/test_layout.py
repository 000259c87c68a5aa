"""A stage's time across attempts (layout.StageRun): kept in .started.json while it works, summed in meta.json."""

import os
import subprocess
import sys
import time

import pytest

from lightreasoner import layout
from lightreasoner.utils import read_json

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
