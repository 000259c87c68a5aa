"""The GPU check's smoke run: `bash benchmarks/gpu_check.sh --smoke` runs every part on the CPU and writes the JSON.

No speed is asserted: only that the command succeeds and the JSON has each part's figures, finite and positive,
with units, the same keys the full run writes, and the environment it was measured in.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLOTS = (8, 32, 64, 128, 256)
EXPECTED = {
    "invariance": {f"{k}.{p}" for p in ("native", "fixed") for k in ("ops.mean", "ops.linear", "ops.attention",
                                                                     "ops.scoring", "decode", "completions",
                                                                     "sampling", "textpath")},
    "sampling": {"bare_s", "ours_s", "authors_s", "authors_over_ours", "ours_over_bare"},
    "training": {"authors_s_per_epoch", "packed_s_per_epoch", "speedup", "authors_peak_memory",
                 "packed_peak_memory", "memory_ratio"},
    "evaluation": {f"slots_{s}.{k}" for s in SLOTS for k in ("tokens_per_s", "step_time", "seconds",
                                                                             "same_as_first_wave")},
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "figures" / "smoke.json"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=out.parent.parent, timeout=900)
    return proc, out


def test_smoke_run_succeeds_and_says_where_the_json_went(smoke):
    proc, out = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert out.is_file()
    assert f"figures: {out}" in proc.stdout


def test_json_has_every_part_with_positive_finite_figures(smoke):
    proc, out = smoke
    data = json.loads(out.read_text())
    assert data["smoke"] is True
    assert set(data["parts"]) == set(EXPECTED)
    for name, part in data["parts"].items():
        assert part["status"] == "ok", (name, part["status"])
        assert set(part["figures"]) == EXPECTED[name], name
        assert part["wall"]["unit"] == "s" and part["wall"]["value"] > 0
        for key, figure in part["figures"].items():
            assert figure["unit"], (name, key)
            assert math.isfinite(figure["value"]) and figure["value"] > 0, (name, key, figure)
    assert data["total_wall"]["value"] >= max(p["wall"]["value"] for p in data["parts"].values())


def test_json_names_the_device_and_versions(smoke):
    _, out = smoke
    env = json.loads(out.read_text())["environment"]
    import torch
    import transformers

    assert env["device_type"] == "cpu" and env["device"]
    assert env["torch"] == torch.__version__ and env["transformers"] == transformers.__version__


def test_unknown_part_is_refused_with_the_choices(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", "--parts", "sampling,speed",
                           "--out", str(tmp_path / "x.json")], capture_output=True, text=True,
                          env=dict(os.environ, PYTHON=sys.executable), timeout=120)
    assert proc.returncode != 0
    assert "speed" in proc.stderr and "evaluation" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_a_failing_part_is_recorded_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory, pretend")

    monkeypatch.setattr(gpu_check, "sampling_part", broken)
    monkeypatch.setitem(gpu_check.SIZES["smoke"], "slots", (8,))
    out = tmp_path / "partial.json"
    assert gpu_check.main(["--smoke", "--parts", "sampling,evaluation", "--out", str(out)]) == 1
    parts = json.loads(out.read_text())["parts"]
    assert parts["sampling"]["status"] == "error: RuntimeError: out of memory, pretend"
    assert parts["sampling"]["figures"] == {}
    assert parts["evaluation"]["status"] == "ok"
    assert parts["evaluation"]["figures"]["slots_8.tokens_per_s"]["value"] > 0
