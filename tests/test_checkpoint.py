"""Training checkpoints without pickle (lightreasoner.checkpoint): the format, fsync order, damaged checkpoints,
and resuming through them bit for bit."""

from __future__ import annotations

import copy
import json
import os
import pickle
import random
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from lightreasoner import checkpoint as ck
from lightreasoner import train as tr
from lightreasoner import training
from lightreasoner import trajectories as tj
from lightreasoner.config import ConfigError
from lightreasoner.utils import InputError

sys.path.insert(0, str(Path(__file__).parent))
from test_train import adapter_tensors, cfg, lora_model, make_records, write_jsonl  # noqa: E402
from test_train import records, samples_file  # noqa: E402, F401 (fixtures)

PICKLE_SUFFIXES = {".pkl", ".bin", ".pt", ".pth", ".pickle"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, expert, tokenizer):
    """Trained once for the module: an uninterrupted 4-update run, and the same run stopped after update 3
    (checkpoints step-000002 and step-000003). LoRA dropout is on, so the RNG state must resume too."""
    root = tmp_path_factory.mktemp("runs")
    trajs, _ = tj.load_training_examples(write_jsonl(root / "s.jsonl", make_records(tokenizer)), tokenizer)
    for name, extra in (("straight", {}), ("stopped", {"stop_after": 3})):
        c = cfg(root, output=str(root / name), save_every=2, **extra)
        training.train(copy.deepcopy(expert), tokenizer, trajs, tr.train_params(c), c.output)
    return root, trajs


def test_resume_equals_an_uninterrupted_run(tmp_path, expert, tokenizer, samples_file):
    trajs, _ = tj.load_training_examples(samples_file, tokenizer)
    straight = cfg(tmp_path, output=str(tmp_path / "a"), save_every=2)  # default LoRA dropout: RNG must resume
    training.train(copy.deepcopy(expert), tokenizer, trajs, tr.train_params(straight), straight.output)
    first = cfg(tmp_path, output=str(tmp_path / "b"), save_every=2, stop_after=3)
    part = training.train(copy.deepcopy(expert), tokenizer, trajs, tr.train_params(first), first.output)
    assert part["finished"] is False and part["update"] == 3
    assert sorted(p.name for p in (tmp_path / "b").glob("step-*")) == ["step-000002", "step-000003"]
    rest = cfg(tmp_path, output=str(tmp_path / "b"), save_every=2)
    summary = training.train(copy.deepcopy(expert), tokenizer, trajs, tr.train_params(rest), rest.output)
    assert summary["finished"] and summary["tuned_tokens"] == 4 * 6
    a, b = adapter_tensors(tmp_path / "a"), adapter_tensors(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-7)
    la = [json.loads(x)["loss"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert la == pytest.approx(lb, abs=1e-7) and len(la) == 4
    with pytest.raises(ConfigError, match="--lr"):  # a resumed run must keep the settings that shape the result
        bad = cfg(tmp_path, output=str(tmp_path / "b"), lr=1e-3)
        (tmp_path / "b" / "summary.json").unlink()
        training.train(copy.deepcopy(expert), tokenizer, trajs, tr.train_params(bad), bad.output)


def stopped_copy(runs, tmp_path) -> Path:
    shutil.copytree(runs[0] / "stopped", tmp_path / "out")
    return tmp_path / "out"


def finish(runs, expert, tokenizer, out: Path, **kw) -> dict:
    c = cfg(out.parent, output=str(out), save_every=2, **kw)
    return training.train(copy.deepcopy(expert), tokenizer, runs[1], tr.train_params(c), c.output)


def assert_equals_uninterrupted(runs, out: Path) -> None:
    a, b = adapter_tensors(runs[0] / "straight"), adapter_tensors(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    la, lb = ([json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()]
              for d in (runs[0] / "straight", out))
    assert la == lb and len(la) == 4


def test_a_checkpoint_holds_no_pickle_and_resumes_without_unpickling(runs, expert, tokenizer, tmp_path,
                                                                     monkeypatch):
    out = stopped_copy(runs, tmp_path)
    files = {str(p.relative_to(out / "step-000003")) for p in (out / "step-000003").rglob("*") if p.is_file()}
    assert {ck.WEIGHTS, ck.OPTIMIZER, ck.OPTIMIZER_JSON, ck.SCHEDULER, ck.rng_file(0), ck.MARKER,
            "adapter/adapter_model.safetensors", "adapter/adapter_config.json"} <= files
    assert not {f for f in files if Path(f).suffix in PICKLE_SUFFIXES}
    marker = json.loads((out / "step-000003" / ck.MARKER).read_text())
    assert marker["format"] == ck.FORMAT and marker["state"]["update"] == 3 and set(marker["files"]) == files - {
        ck.MARKER}

    unsafe = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: unsafe.append(("torch.load", k)) if k.get(
        "weights_only") is not True else real_load(*a, **k))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: unsafe.append("pickle.load"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: unsafe.append("pickle.loads"))
    from accelerate import Accelerator

    monkeypatch.setattr(Accelerator, "load_state", lambda *a, **k: unsafe.append("load_state"))
    summary = finish(runs, expert, tokenizer, out)
    assert unsafe == [] and summary["finished"]
    assert_equals_uninterrupted(runs, out)


@pytest.mark.parametrize("damage", ["truncate weights", "flip an optimizer byte", "lose the rng file"])
def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous(runs, expert, tokenizer, tmp_path, caplog, damage):
    out = stopped_copy(runs, tmp_path)
    newest = out / "step-000003"
    if damage == "truncate weights":
        path = newest / ck.WEIGHTS
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    elif damage == "flip an optimizer byte":
        path = newest / ck.OPTIMIZER
        data = bytearray(path.read_bytes())
        data[-5] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        path = newest / ck.rng_file(0)
        path.unlink()
    with caplog.at_level("WARNING"):
        summary = finish(runs, expert, tokenizer, out)
    assert f"skipping checkpoint {newest}: {path.name} is" in caplog.text
    assert summary["finished"]
    assert_equals_uninterrupted(runs, out)  # resumed from step-000002: still the same result


def test_a_checkpoint_of_another_run_is_checked_against_that_runs_settings(runs, expert, tokenizer, tmp_path):
    """--resume DIR into a new --output: the checkpoint's own run says how it was made."""
    with pytest.raises(ConfigError, match=r"--lr: checkpoint 0.01, now 0.001"):
        finish(runs, expert, tokenizer, tmp_path / "new", resume=str(runs[0] / "stopped" / "step-000003"), lr=1e-3)
    assert not (tmp_path / "new" / "adapter_model.safetensors").exists()


def test_an_explicit_resume_of_a_damaged_checkpoint_names_the_file(runs, expert, tokenizer, tmp_path):
    out = stopped_copy(runs, tmp_path)
    path = out / "step-000003" / ck.OPTIMIZER_JSON
    path.write_text(path.read_text()[:-20])
    with pytest.raises(InputError, match=rf"{re.escape(str(path))}: damaged"):
        finish(runs, expert, tokenizer, out, resume=str(out / "step-000003"))


def written(folder: Path, model, world_size: int = 1) -> tuple[torch.optim.Optimizer, object]:
    """A checkpoint of ``model`` after one AdamW step, written with the library's pieces (no accelerate)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, training.linear_schedule(10))
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    sched.step()
    ck.prepare_folder(folder)
    ck.write_shared(folder, model, opt, sched)
    for r in range(world_size):
        ck.write_rng(folder, r)
    ck.write_marker(folder, {"update": 1}, world_size)
    return opt, sched


def test_read_and_apply_restore_weights_optimizer_schedule_and_rngs(tmp_path, expert):
    model = lora_model(expert)
    opt, sched = written(tmp_path / "step-000001", model)
    draws = (torch.rand(3), random.random())
    saved = ({k: v.clone() for k, v in opt.state_dict()["state"][0].items()}, sched.state_dict())
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    other = lora_model(expert)  # fresh optimizer and schedule, other RNG position
    other_opt = torch.optim.AdamW([p for p in other.parameters() if p.requires_grad], lr=1e-2)
    other_sched = torch.optim.lr_scheduler.LambdaLR(other_opt, training.linear_schedule(10))
    got = ck.read(tmp_path / "step-000001", other, other_opt, other_sched, rank=0, world_size=1)
    ck.apply(got, other, other_opt, other_sched)
    assert got.state == {"update": 1}
    assert all(torch.equal(p, weights[n]) for n, p in other.named_parameters() if p.requires_grad)
    state = other_opt.state_dict()["state"][0]
    assert all(torch.equal(state[k], v) for k, v in saved[0].items())
    assert other_opt.param_groups[0]["betas"] == (0.9, 0.999) and other_sched.state_dict() == saved[1]
    assert torch.equal(torch.rand(3), draws[0]) and random.random() == draws[1]


def test_weights_that_do_not_fit_the_model_and_missing_ranks_are_named(tmp_path, expert):
    folder = tmp_path / "step-000001"
    written(folder, lora_model(expert, lora_r=8))
    small = lora_model(expert, lora_r=4)
    small_opt = torch.optim.AdamW([p for p in small.parameters() if p.requires_grad])
    with pytest.raises(ck.CheckpointError, match=rf"{ck.WEIGHTS}: .*lora.* is \(.*8.*\).*the model's is \("):
        ck.read(folder, small, small_opt, torch.optim.lr_scheduler.LambdaLR(small_opt, training.linear_schedule(10)),
                rank=0, world_size=1)
    written(folder, lora_model(expert), world_size=2)
    (folder / ck.rng_file(1)).unlink()
    model = lora_model(expert)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    with pytest.raises(ck.CheckpointError, match=rf"{ck.rng_file(1)}: missing"):
        ck.read(folder, model, opt, torch.optim.lr_scheduler.LambdaLR(opt, training.linear_schedule(10)), rank=0,
                world_size=2)
    with pytest.raises(InputError, match="written by 2 process.*this run has 1"):
        ck.read(folder, model, opt, None, rank=0, world_size=1)


def test_an_old_pickle_checkpoint_is_refused_not_loaded_or_skipped(tmp_path):
    folder = tmp_path / "step-000002"
    folder.mkdir()
    (folder / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps({"x": 1}))
    (folder / ck.MARKER).write_text(json.dumps({"state": {"update": 2}, "time": 0}))
    with pytest.raises(InputError, match="older lightreasoner wrote it with pickle files") as e:
        ck.read(folder, None, None, None, rank=0, world_size=1)
    assert not isinstance(e.value, ck.CheckpointError)  # --resume auto stops on it instead of starting over


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names fsynced files through /proc")
def test_every_file_then_the_folder_is_fsynced_and_the_marker_last(tmp_path, expert, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    folder = tmp_path / "step-000001"
    written(folder, lora_model(expert))
    marker_at = max(i for i, p in enumerate(synced) if Path(p).name.startswith(f".{ck.MARKER}.tmp"))
    before = set(synced[:marker_at])
    assert {str(p) for p in folder.rglob("*") if p.name != ck.MARKER} | {str(folder)} <= before
    assert synced[marker_at + 1:] == [str(folder)]  # the rename made durable: the marker is the last thing


def test_sharded_optimizer_state_is_refused_at_start_naming_the_way_out():
    for kind in ("FSDP", "DEEPSPEED"):
        with pytest.raises(InputError, match=f"under {kind}.*--save-every none.*ddp.yaml"):
            ck.require_supported(kind, saves=True, resumes=False)
        ck.require_supported(kind, saves=False, resumes=False)
    ck.require_supported("MULTI_GPU", saves=True, resumes=True)
