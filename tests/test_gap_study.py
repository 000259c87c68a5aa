"""The expertise-gap study's bookkeeping (benchmarks/gap_study.py): the early-layer rule, the job plan and the table.

No model runs here: the evaluations are stand-in folders in the layout `lightreasoner eval` writes (per-problem
records, summary.json, meta.json last), so the table's pairing, gaps and hours are checked against hand counts.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gs():
    spec = importlib.util.spec_from_file_location("gap_study", ROOT / "benchmarks" / "gap_study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gap_study"] = module  # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gap_study"]


def fake_eval(folder: Path, correct: list[bool], seconds: float = 3600.0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gsm8k.jsonl").write_text("".join(json.dumps({"id": str(i), "correct": c}) + "\n"
                                                for i, c in enumerate(correct)))
    accuracy = round(100 * sum(correct) / len(correct), 1)  # rounded as `eval` writes it; the counts are not
    (folder / "summary.json").write_text(json.dumps({"average": accuracy, "benchmarks": {"gsm8k": {
        "n": len(correct), "correct": sum(correct), "accuracy": accuracy}}}))
    (folder / "meta.json").write_text(json.dumps({"seconds": seconds}))


def test_layer_rule_closest_to_target_ties_deeper(gs):
    assert gs.layer_order(24) == [22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2]
    assert gs.layer_order(28)[:3] == [26, 24, 22]
    assert gs.choose_layer({22: 40.0, 20: 12.0, 18: 3.0}, target=10.0) == 20
    assert gs.choose_layer({22: 12.0, 20: 8.0}, target=10.0) == 22  # a tie: the deeper layer
    assert gs.choose_layer({22: 30.0, 20: 1.0}, target=10.0) == 20


def test_every_job_has_its_own_folder(gs, tmp_path):
    """A job is done when its folder holds meta.json: two jobs sharing a folder would mark each other done."""
    jobs = gs.jobs(tmp_path)
    folders = [j.folder for j in jobs]
    assert len(folders) == len(set(folders)), [j.name for j in jobs if folders.count(j.folder) > 1]
    assert len({j.name for j in jobs}) == len(jobs)
    assert not any(j.done() for j in jobs)
    arms = {j.name.split(" ", 1)[1] for j in jobs if j.name.startswith("train ")}
    assert arms == {a.name for a in gs.ARMS} and len(arms) == 7
    self_sample = next(j for j in jobs if j.name == "sample coder-0.5b__self__embedded")
    assert "layer scan" in self_sample.describe  # its amateur is decided by the scan


def test_table_pairs_each_arm_against_its_base(gs, tmp_path):
    root = tmp_path
    n = 20
    base = [i < 10 for i in range(n)]  # 50.0
    tuned = [i < 8 or i in (15, 16, 17, 18) for i in range(n)]  # 60.0: 2 lost, 4 gained
    fake_eval(root / "eval" / "coder-0.5b", base)
    fake_eval(root / "eval" / "smollm2-135m", [i < 2 for i in range(n)], seconds=1800.0)  # 10.0
    fake_eval(root / "layers" / "coder-0.5b", [i < 6 for i in range(n)])  # 30.0 on the train problems
    arm = root / "arms" / "coder-0.5b__smollm2-135m__embedded"
    (arm / "sample").mkdir(parents=True)
    (arm / "sample" / "meta.json").write_text(json.dumps({"counts": {"kept_fraction": 0.25}, "seconds": 360.0}))
    (arm / "train").mkdir()
    (arm / "train" / "meta.json").write_text(json.dumps({"seconds": 720.0}))
    fake_eval(arm / "eval", tuned, seconds=3000.0)
    (arm / "eval" / gs.UNRECORDED).write_text(json.dumps({"seconds": 600.0, "why": "a piece killed outright"}))
    scan = gs.scan_folder(root, gs.E05)
    scan.mkdir(parents=True)
    (scan / "choice.json").write_text(json.dumps({"layer": 16, "target": 10.0, "scanned": {"22": 40.0, "16": 8.0}}))
    (scan / "meta.json").write_text(json.dumps({"done": True}))

    gs.table(root)
    out = json.loads((root / "gap_study.json").read_text())
    rows = {r["arm"]: r for r in out["arms"]}
    smol = rows["coder-0.5b__smollm2-135m__embedded"]
    assert (smol["base"], smol["amateur_accuracy"], smol["gap"], smol["gap_on"]) == (50.0, 10.0, 40.0, "test")
    assert smol["tuned"] == 60.0 and smol["kept_fraction"] == 0.25
    paired = smol["paired"]["benchmarks"]["gsm8k"]
    assert (paired["n"], paired["a_only"], paired["b_only"], paired["delta"]) == (n, 2, 4, 10.0)
    assert smol["hours"] == pytest.approx((360 + 720 + 3000 + 600) / 3600, abs=0.01)  # the unrecorded piece too
    # the early layer: no whole-test accuracy yet, so its gap is on the train problems (base 30 - layer 8)
    own = rows["coder-0.5b__self__embedded"]
    assert (own["amateur"], own["amateur_train100"], own["gap"], own["gap_on"]) == ("self:16", 8.0, 22.0, "train100")
    assert "paired" not in own and own["tuned"] is None and own["hours"] is None  # not started: no hours
    # an unfinished evaluation (no meta.json) is not read as a result
    (root / "eval" / "coder-1.5b").mkdir(parents=True)
    (root / "eval" / "coder-1.5b" / "summary.json").write_text(json.dumps({"average": 99.0}))
    gs.table(root)
    rows = {r["arm"]: r for r in json.loads((root / "gap_study.json").read_text())["arms"]}
    assert rows["coder-1.5b__coder-0.5b__embedded"]["base"] is None
    # the whole study's hours: every finished job (two evals, one layer-target eval, the scan's none, the arm's three)
    assert out["wall_hours"] == pytest.approx((3600 + 1800 + 3600 + 360 + 720 + 3600) / 3600, abs=0.01)
    md = (root / "gap_study.md").read_text()
    smol_line = next(line for line in md.splitlines() if "smollm2" in line and "coder-0.5b |" in line)
    assert "| 40.0 |" in smol_line and "| +10.0 (" in smol_line and "| 1.30 |" in smol_line
    assert "22.0 †" in md
    own_line = next(line for line in md.splitlines() if "self:16" in line)
    assert own_line.endswith("| - |")
    assert (root / "gain_vs_gap.png").stat().st_size > 0


def test_gaps_from_unrounded_accuracies_and_a_running_arm(gs, tmp_path):
    """A gap is the difference of the exact accuracies (46.67 - 3.33 = 43.3, not 46.7 - 3.3 = 43.4); an arm whose
    evaluation is running shows no hours, while the study's total counts the time its pieces kept so far."""
    root, n = tmp_path, 30
    fake_eval(root / "eval" / "coder-0.5b", [i < 14 for i in range(n)])
    fake_eval(root / "eval" / "smollm2-135m", [i < 1 for i in range(n)])
    arm = root / "arms" / "coder-0.5b__smollm2-135m__embedded"
    (arm / "sample").mkdir(parents=True)
    (arm / "sample" / "meta.json").write_text(json.dumps({"counts": {"kept_fraction": 0.25}, "seconds": 360.0}))
    (arm / "train").mkdir()
    (arm / "train" / "meta.json").write_text(json.dumps({"seconds": 720.0}))
    (arm / "eval").mkdir()
    (arm / "eval" / ".started.json").write_text(json.dumps({"identity": {}, "seconds": 900.0}))
    gs.table(root)
    out = json.loads((root / "gap_study.json").read_text())
    smol = next(r for r in out["arms"] if r["arm"] == arm.name)
    assert smol["gap"] == pytest.approx(100 * 13 / 30) and smol["hours"] is None and smol["tuned"] is None
    line = next(x for x in (root / "gap_study.md").read_text().splitlines() if "smollm2" in x and "0.5b |" in x)
    assert "| 43.3 |" in line and line.endswith("| running |")
    assert out["wall_hours"] == pytest.approx((3600 + 3600 + 360 + 720 + 900) / 3600, abs=0.01)


def test_early_exit_evaluation_writes_its_result_last_and_is_not_redone(gs, tmp_path, model_dirs, monkeypatch):
    """view_eval (the layer scan's and the whole-test early-layer evaluation) on a tiny expert cut after layer 1."""
    from lightreasoner.testing import gsm8k_style_rows

    monkeypatch.setattr(gs, "MAX_NEW_TOKENS", 24)
    data = tmp_path / "data" / "gsm8k"
    data.mkdir(parents=True)
    rows = gsm8k_style_rows()[:3]
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = tmp_path / "layer01"
    accuracy = gs.view_eval(model_dirs[0], 1, folder, tmp_path / "data")
    records = [json.loads(line) for line in (folder / "gsm8k.jsonl").read_text().splitlines()]
    assert len(records) == len(rows)
    assert accuracy == pytest.approx(100 * sum(r["correct"] for r in records) / len(rows), abs=0.05)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["model"] == f"self:1 of {model_dirs[0]}" and meta["seconds"] > 0
    assert gs.accuracy(folder) == accuracy  # the table reads it like a stage's eval folder
    before = (folder / "gsm8k.jsonl").stat().st_mtime_ns
    assert gs.view_eval(model_dirs[0], 1, folder, tmp_path / "data") == accuracy
    assert (folder / "gsm8k.jsonl").stat().st_mtime_ns == before  # done: nothing recomputed


def test_lost_folders_are_read_from_their_recorded_counts(gs, tmp_path):
    """An arm whose folders were lost: its figures are recomputed from recorded.json's counts, as compare_runs
    computes a live arm's; a folder made again is read live instead; the study's hours add the recorded ones."""
    from lightreasoner.stats import compare_runs, mcnemar_exact

    root = tmp_path
    n = 20
    arm = "arms/coder-0.5b__smollm2-135m__embedded"
    (root / gs.RECORDED).write_text(json.dumps({"wall_hours_sessions_8_14": 5.0, "folders": {
        "eval/coder-0.5b": {"session": 9, "n": n, "correct": 10, "hours": 1.0},
        "eval/smollm2-135m": {"session": 9, "n": n, "correct": 2, "hours": 0.5},
        arm: {"session": 11, "steps": 100, "kept": 25, "n": n, "base_correct": 10, "correct": 12,
              "base_only": 2, "tuned_only": 4, "hours": 1.5}}}))
    gs.table(root)
    out = json.loads((root / "gap_study.json").read_text())
    smol = next(r for r in out["arms"] if r["arm"] == arm.split("/")[1])
    assert (smol["base"], smol["tuned"], smol["amateur_accuracy"], smol["gap"]) == (50.0, 60.0, 10.0, 40.0)
    assert smol["kept_fraction"] == 0.25 and smol["hours"] == 1.5 and smol["recorded_in_session"] == 11
    paired = smol["paired"]["benchmarks"]["gsm8k"]
    assert (paired["a_only"], paired["b_only"], paired["delta"]) == (2, 4, 10.0)
    assert paired["p_value"] == mcnemar_exact(2, 4)
    # the same figures as a live pairing of folders with these counts
    base = [i < 10 for i in range(n)]
    tuned = [i < 8 or i in (15, 16, 17, 18) for i in range(n)]
    fake_eval(tmp_path / "live" / "a", base)
    fake_eval(tmp_path / "live" / "b", tuned)
    live = compare_runs(tmp_path / "live" / "a", tmp_path / "live" / "b")
    for key in ("delta", "delta_ci95", "p_value", "min_detectable_80", "acc_a", "acc_b"):
        assert paired[key] == json.loads(json.dumps(live["benchmarks"]["gsm8k"][key])), key  # as gap_study.json
    md = (root / "gap_study.md").read_text()
    assert "smollm2-135m-instruct ‡" in md and "‡ figures recomputed" in md
    assert out["wall_hours"] == pytest.approx(5.0)  # the recorded hours; no live folder is finished
    # a base evaluation made again is read live, not from the record
    fake_eval(root / "eval" / "coder-0.5b", [i < 11 for i in range(n)], seconds=7200.0)  # 55.0
    gs.table(root)
    out = json.loads((root / "gap_study.json").read_text())
    own = next(r for r in out["arms"] if r["arm"] == "coder-0.5b__gemma-3-270m__embedded")
    assert own["base"] == 55.0
    assert out["wall_hours"] == pytest.approx(7.0)
    # a record that does not add up is refused, naming the file
    (root / gs.RECORDED).write_text(json.dumps({"folders": {arm: {
        "session": 11, "steps": 100, "kept": 25, "n": n, "base_correct": 10, "correct": 13,
        "base_only": 2, "tuned_only": 4, "hours": 1.5}}}))
    with pytest.raises(ValueError, match="recorded.json"):
        gs.table(root)
