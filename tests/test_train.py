"""lightreasoner train / merge on tiny random models and the byte tokenizer."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightreasoner import merge as mg
from lightreasoner import models, packing, train as tr, training
from lightreasoner import trajectories as tj
from lightreasoner.config import ConfigError, resolve
from lightreasoner.contrast import dense_kl_loss, dense_label
from lightreasoner.prompts import DEFAULT_SYSTEM_PROMPT
from lightreasoner.testing import gsm8k_style_rows
from lightreasoner.utils import InputError

SRC = str(Path(__file__).resolve().parents[1] / "src")
PRINTABLE = [ord(c) for c in "abcdefghijklmnopqrstuvwxyz 0123456789+-=.,"]


def head_text(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template([{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                                          {"role": "user", "content": question}],
                                         tokenize=False, add_generation_prompt=True)


def make_records(tokenizer, n: int = 6, completion_len: int = 24, steps: int = 5, seed: int = 0,
                 questions: list[str] | None = None) -> list[dict]:
    """Sample records in our format with printable completions (so decoded prefixes re-tokenize exactly)."""
    rng = random.Random(seed)
    qs = questions or [f"{r['question']} (#{i})" for i, r in enumerate(gsm8k_style_rows() * 4)]
    byte_to_id = {b: tokenizer.convert_tokens_to_ids(tokenizer.convert_ids_to_tokens(
        tokenizer(chr(b), add_special_tokens=False)["input_ids"][0])) for b in PRINTABLE}
    out = []
    for i in range(n):
        prompt = tokenizer(head_text(tokenizer, qs[i]))["input_ids"]
        completion = [byte_to_id[rng.choice(PRINTABLE)] for _ in range(completion_len)]
        st = []
        for pos in sorted(rng.sample(range(completion_len), steps)):
            ids = rng.sample(range(300), rng.randint(1, 3))
            w = [rng.random() + 0.1 for _ in ids]
            st.append({"pos": pos, "kl": 1.0, "token_ids": ids, "weights": [x / sum(w) for x in w],
                       "expert_top": [], "amateur_top": []})
        out.append({"id": f"r{i}", "question": qs[i], "prompt_ids": prompt, "completion_ids": completion,
                    "kl": [0.0] * completion_len, "steps": st})
    return out


def to_authors(tokenizer, records: list[dict]) -> list[dict]:
    """Our records -> the authors' per-step rows (prompt_id = question text, prefix = decoded completion)."""
    rows = []
    for r in records:
        for s in r["steps"]:
            rows.append({"prompt_id": r["question"], "step": s["pos"],
                         "prefix": tokenizer.decode(r["completion_ids"][:s["pos"]]),
                         "tokens": [tokenizer.decode([t]) for t in s["token_ids"]], "token_ids": s["token_ids"],
                         "weights": s["weights"], "kl_divergence": s["kl"]})
    random.Random(1).shuffle(rows)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cfg(tmp_path, **kw) -> tr.TrainConfig:
    base = dict(samples="unused.jsonl", output=str(tmp_path / "out"), dtype="float32", tensorboard=False,
                save_every=None, log_every=1, steps_per_update=6, max_steps=4, lr=1e-2)
    base.update(kw)
    return resolve(tr.TrainConfig, cli=base)


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "adapter_model.safetensors"))


@pytest.fixture
def records(tokenizer):
    return make_records(tokenizer)


@pytest.fixture
def samples_file(tmp_path, records):
    return write_jsonl(tmp_path / "samples.jsonl", records)


# ---------------------------------------------------------------------------------------------------------------
# Data


def test_records_become_trajectories(tokenizer, records, samples_file):
    trajs, stats = tj.load_training_examples(samples_file, tokenizer)
    assert stats["format"] == "records" and stats["records"] == len(records)
    assert stats["kept_steps"] == sum(len(r["steps"]) for r in records)
    for t, r in zip(trajs, records):
        full = r["prompt_ids"] + r["completion_ids"]
        assert t.input_ids == full[:len(t.input_ids)]
        assert len(t.input_ids) == t.positions[-1] + 1  # cut after the last kept position
        for pos, s in zip(t.positions, r["steps"]):
            # the logits at `pos` predict completion_ids[s.pos]: the token right after input_ids[pos]
            assert pos == len(r["prompt_ids"]) + s["pos"] - 1
            assert full[pos + 1] == r["completion_ids"][s["pos"]]


def test_authors_format_rebuilds_the_same_trajectories(tmp_path, tokenizer, records, samples_file):
    ours, _ = tj.load_training_examples(samples_file, tokenizer)
    path = write_jsonl(tmp_path / "authors.jsonl", to_authors(tokenizer, records))
    theirs, stats = tj.load_training_examples(path, tokenizer)
    assert stats["format"] == "authors" and stats["records"] == sum(len(r["steps"]) for r in records)
    key = lambda t: (t.input_ids, t.positions, t.label_ids, t.label_weights)  # noqa: E731
    assert sorted(map(key, theirs)) == sorted(map(key, ours))  # grouped by question into one sequence each


def test_parquet_reads_like_jsonl(tmp_path, tokenizer, records, samples_file):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), tmp_path / "samples.parquet")
    a, _ = tj.load_training_examples(samples_file, tokenizer)
    b, _ = tj.load_training_examples(tmp_path / "samples.parquet", tokenizer)
    assert [(t.input_ids, t.positions, t.label_ids) for t in a] == [(t.input_ids, t.positions, t.label_ids)
                                                                     for t in b]


def test_long_contexts_keep_their_end(tokenizer, records, tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", records[:2])
    full, _ = tj.load_training_examples(path, tokenizer)
    cut, stats = tj.load_training_examples(path, tokenizer, max_length=40)
    assert stats["kept_steps"] == sum(t.n_steps for t in full)  # windows: no step lost
    assert stats["truncated_windows"] > 0
    assert all(len(t.input_ids) <= 40 for t in cut)
    # each step still sees the end of its own context, and the same label
    ends = {(tuple(t.input_ids[p - 5:p + 1]), tuple(ids)) for t in full
            for p, ids in zip(t.positions, map(tuple, t.label_ids))}
    assert {(tuple(t.input_ids[p - 5:p + 1]), tuple(ids)) for t in cut
            for p, ids in zip(t.positions, map(tuple, t.label_ids))} == ends
    # a step with nothing before it (empty prompt, pos 0) cannot be trained: dropped and counted
    bad = dict(records[0], prompt_ids=[], steps=[dict(records[0]["steps"][0], pos=0), records[0]["steps"][-1]])
    _, stats = tj.load_training_examples(write_jsonl(tmp_path / "b.jsonl", [bad]), tokenizer)
    assert stats["dropped_steps"] == 1 and stats["kept_steps"] == 1


def test_bad_inputs_give_clear_errors(tmp_path, tokenizer, records):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match="no sample records"):
        tj.load_training_examples(empty, tokenizer)
    torn = tmp_path / "torn.jsonl"
    torn.write_text(json.dumps(records[0]) + "\n" + json.dumps(records[1])[:50] + "\n")
    with pytest.raises(InputError, match=r"torn\.jsonl:2: not valid JSON"):
        tj.load_training_examples(torn, tokenizer)
    bad_pos = write_jsonl(tmp_path / "pos.jsonl", [dict(records[0], steps=[dict(records[0]["steps"][0], pos=999)])])
    with pytest.raises(InputError, match=r"pos\.jsonl:1: steps\[0\]: pos 999 is outside"):
        tj.load_training_examples(bad_pos, tokenizer)
    none_kept = write_jsonl(tmp_path / "none.jsonl", [dict(r, steps=[]) for r in records])
    with pytest.raises(InputError, match="none of its 6 records has a kept step"):
        tj.load_training_examples(none_kept, tokenizer)
    with pytest.raises(InputError, match="not a sample record"):
        tj.load_training_examples(write_jsonl(tmp_path / "x.jsonl", [{"question": "q"}]), tokenizer)
    trajs, _ = tj.load_training_examples(write_jsonl(tmp_path / "ok.jsonl", records), tokenizer)
    rows = 1 + max(max(t.input_ids + [i for ids in t.label_ids for i in ids]) for t in trajs)
    tj.check_token_range(trajs, rows)  # every id is a row: nothing to say
    t = trajs[0]
    far_input = dataclasses.replace(t, input_ids=t.input_ids[:-1] + [rows])
    far_label = dataclasses.replace(t, label_ids=[[rows]] + t.label_ids[1:],
                                    label_weights=[[1.0]] + t.label_weights[1:])
    for bad, what in ((far_input, "input"), (far_label, "label")):
        with pytest.raises(InputError, match=f"{what} token id {rows} but the model has only {rows} rows"):
            tj.check_token_range([bad], rows)


def test_label_weights_rounded_in_the_file_are_renormalised(tmp_path, tokenizer, records):
    step = records[0]["steps"][0]
    rounded = [round(w * 0.995, 6) for w in step["weights"]]  # sums to 0.995: within the 1% allowed
    path = write_jsonl(tmp_path / "r.jsonl", [dict(records[0], steps=[dict(step, weights=rounded)])])
    (t,), _ = tj.load_training_examples(path, tokenizer)
    assert math.fsum(t.label_weights[0]) == pytest.approx(1.0, abs=1e-12)
    assert t.label_weights[0] == pytest.approx([w / math.fsum(rounded) for w in rounded], rel=1e-12)
    far = [w * 0.9 for w in step["weights"]]
    with pytest.raises(InputError, match="label weights sum to 0.9000, not 1"):
        far_file = write_jsonl(tmp_path / "f.jsonl", [dict(records[0], steps=[dict(step, weights=far)])])
        tj.load_training_examples(far_file, tokenizer)


def test_the_lr_schedule_is_transformers():
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    for warmup in (0, 3):
        for constant in (False, True):
            opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
            ref = (get_constant_schedule_with_warmup(opt, warmup) if constant
                   else get_linear_schedule_with_warmup(opt, warmup, 10)).lr_lambdas[0]
            ours = training.linear_schedule(10, warmup, constant)
            assert [ours(i) for i in range(11)] == pytest.approx([ref(i) for i in range(11)], abs=1e-12)


def test_an_fp16_overflow_skips_the_update_without_stopping():
    """fp16's loss scaler skips a step whose gradients overflowed: the schedule stays put and it is no
    divergence; without a scaler (or when it stepped) the schedule moves on."""
    class Acc:
        def __init__(self, scaler, skipped):
            self.scaler, self.optimizer_step_was_skipped = scaler, skipped

    for scaler, skipped, moves in ((object(), True, False), (object(), False, True), (None, True, True)):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, training.linear_schedule(10))
        assert training.step_optimizer(Acc(scaler, skipped), opt, sched) == (scaler is not None and skipped)
        assert sched.last_epoch == (1 if moves else 0)


def test_samples_from_another_expert_are_refused(tmp_path, model_dirs, records, caplog):
    expert_dir, amateur_dir = model_dirs
    path = write_jsonl(tmp_path / "s.jsonl", records)
    fp_expert = models.fingerprint(models.resolve_source(expert_dir))
    manifest = {"expert": {"spec": "another-model", "fingerprint": "sha256:another"}}
    (tmp_path / "s.manifest.json").write_text(json.dumps(manifest))
    c = cfg(tmp_path, samples=str(path), expert=expert_dir)
    with pytest.raises(InputError, match="sampled from expert .* pass --force"):
        tr.main(c)
    assert not (tmp_path / "out").exists()  # refused before loading or writing anything
    (tmp_path / "s.manifest.json").write_text(json.dumps({"expert": {"spec": expert_dir, "fingerprint": fp_expert}}))
    assert tj.check_manifest(path, fp_expert)["expert"]["spec"] == expert_dir  # the right expert passes
    with caplog.at_level("WARNING"):
        tj.check_manifest(path, "sha256:other", force=True)
        tj.check_manifest(tmp_path / "no-manifest.jsonl", "sha256:x")
    assert "--force: training anyway" in caplog.text and "no manifest" in caplog.text


def test_unfinished_or_doubled_samples_are_refused(tmp_path, model_dirs, tokenizer, records, caplog):
    path, manifest = write_jsonl(tmp_path / "s.jsonl", records), tmp_path / "s.manifest.json"
    manifest.write_text(json.dumps({"complete": False, "counts": {"problems": 6}}))
    with pytest.raises(InputError, match=r"s\.jsonl: its manifest s\.manifest\.json says the sampling run did not "
                                         r"finish.*Rerun `lightreasoner sample` with the same command.*--force"):
        tr.main(cfg(tmp_path, samples=str(path), expert=model_dirs[0]))
    assert not (tmp_path / "out").exists()  # refused before loading the model or writing anything
    manifest.write_text(json.dumps({"complete": True, "counts": {"problems": 9}}))
    with pytest.raises(InputError, match="manifest s.manifest.json counts 9 records, the file holds 6"):
        tj.load_training_examples(path, tokenizer)
    with caplog.at_level("WARNING"):
        assert tj.load_training_examples(path, tokenizer, force=True)[1]["records"] == 6
    assert "--force: training anyway" in caplog.text
    doubled = write_jsonl(tmp_path / "d.jsonl", records + [records[1]])  # two sample runs into one file
    with pytest.raises(InputError, match=r"trajectory id 'r1' appears twice, at .*d\.jsonl:2 and .*d\.jsonl:7"):
        tj.load_training_examples(doubled, tokenizer)


def test_config_validation_names_flags(tmp_path):
    with pytest.raises(ConfigError) as e:
        cfg(tmp_path, steps_per_update=0, lr=-1, lora_dropout=1.5, resume="somewhere")
    msg = str(e.value)
    assert "--steps-per-update" in msg and "--lr" in msg and "--lora-dropout" in msg and "--resume" in msg


def test_the_loop_settings_are_the_commands_flags_with_one_set_of_defaults(tmp_path):
    """TrainParams is the loop's half of TrainConfig: same names, same defaults; train_params copies them over."""
    import dataclasses

    flags = {f.name: f.default for f in dataclasses.fields(tr.TrainConfig)}
    loop = {f.name: f.default for f in dataclasses.fields(training.TrainParams)}
    assert {k: flags.get(k, "missing") for k in loop} == loop
    assert set(training.RESUME_FIELDS) <= set(loop)
    c = cfg(tmp_path, lr=3e-3, lora_targets="all-linear", epochs=1.5, stop_after=2)
    assert dataclasses.asdict(tr.train_params(c)) == {k: getattr(c, k) for k in loop}


def test_sft_checks_its_training_settings_before_any_work():
    from lightreasoner.sft import SFTConfig, train_params

    with pytest.raises(ConfigError, match="--steps-per-update must be >= 1.*\n.*--lr must be > 0"):
        resolve(SFTConfig, cli={"output": "x", "steps_per_update": 0, "lr": -1})
    p = train_params(resolve(SFTConfig, cli={"output": "x", "epochs": 1, "lora_alpha": 32}))
    assert (p.epochs, p.lora_alpha, p.seed, p.lora_dropout, p.max_grad_norm) == (1.0, 32.0, 42, 0.05, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# Plan


def test_plan_counts_kept_steps_and_covers_each_epoch():
    counts = [5, 1, 7, 3, 9, 2]
    plan = packing.plan_updates(counts, 4, max_steps=30, seed=3)
    assert len(plan) == 30 and all(u.n_steps == 4 for u in plan)
    stream = [(p.traj, s) for u in plan for p in u.pieces for s in range(p.start, p.stop)]
    total = sum(counts)
    for e in range(len(stream) // total):  # every full epoch visits every kept step once
        assert sorted(stream[e * total:(e + 1) * total]) == [(t, s) for t, c in enumerate(counts) for s in range(c)]
    assert stream[:total] != stream[total:2 * total]  # reshuffled per epoch
    one = packing.plan_updates(counts, 4, epochs=1, seed=3)
    assert sum(u.n_steps for u in one) == total and one[-1].n_steps == (total % 4 or 4)
    assert len(packing.plan_updates(counts, 4, epochs=2.5, seed=3)) == math.ceil(2.5 * total / 4)
    for u in plan[:10]:  # shards partition the update's steps
        shards = [packing.shard_pieces(u.pieces, 3, r) for r in range(3)]
        assert sorted((p.traj, s) for sh in shards for p in sh for s in range(p.start, p.stop)) == sorted(
            (p.traj, s) for p in u.pieces for s in range(p.start, p.stop))
        assert max(sum(p.n_steps for p in sh) for sh in shards) - min(sum(p.n_steps for p in sh)
                                                                      for sh in shards) <= 1


def test_micro_batches_respect_the_token_budget(tokenizer, records, samples_file):
    trajs, _ = tj.load_training_examples(samples_file, tokenizer)
    pieces = [packing.Piece(i, 0, t.n_steps) for i, t in enumerate(trajs)]
    mbs = packing.micro_batches(trajs, pieces, 400)
    assert sorted(p for mb in mbs for p in mb) == sorted(pieces)
    for mb in mbs:
        b = packing.collate(trajs, mb, tokenizer.pad_token_id)
        assert b.input_ids.numel() <= 400 or len(mb) == 1
        assert int(b.keep.sum()) == b.n_steps == sum(p.n_steps for p in mb)


# ---------------------------------------------------------------------------------------------------------------
# The packed loss


def lora_model(expert, **kw):
    c = resolve(tr.TrainConfig, cli=dict(samples="x", output="x", lora_dropout=0.0, **kw))
    torch.manual_seed(0)
    m = training.apply_lora(copy.deepcopy(expert), tr.train_params(c))
    with torch.no_grad():  # B = 0 at init would make the LoRA A gradients vanish: give it values
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    return m


def test_packed_loss_equals_one_forward_per_step(expert, tokenizer, samples_file):
    trajs, _ = tj.load_training_examples(samples_file, tokenizer)
    trajs = trajs[:3]
    model = lora_model(expert)
    params = [p for p in model.parameters() if p.requires_grad]
    pieces = [packing.Piece(0, 0, 3), packing.Piece(1, 0, 5), packing.Piece(2, 1, 4)]  # rows of different lengths
    batch = packing.collate(trajs, pieces, tokenizer.pad_token_id)
    loss_sum, n = packing.packed_loss(model, batch)
    (loss_sum / n).backward()
    packed_grads = [p.grad.clone() for p in params]
    model.zero_grad()

    # The authors' formulation: one right-padded sequence per kept step, dense labels over the whole vocabulary,
    # logits read at each row's own last token.
    seqs, labels = [], []
    for p in pieces:
        t = trajs[p.traj]
        for s in range(p.start, p.stop):
            seqs.append(t.input_ids[:t.positions[s] + 1])
            labels.append((t.label_ids[s], t.label_weights[s]))
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    logits = model(input_ids=ids, attention_mask=mask).logits
    vocab = logits.shape[-1]
    k = max(len(a) for a, _ in labels)
    lab_ids = torch.tensor([a + [-1] * (k - len(a)) for a, _ in labels])
    lab_w = torch.tensor([w + [0.0] * (k - len(w)) for _, w in labels])
    dense = dense_label(lab_ids, lab_w, vocab)
    ref = dense_kl_loss(logits[torch.arange(len(seqs)), mask.sum(1) - 1], dense)
    ref.backward()
    assert n == len(seqs) == 11
    torch.testing.assert_close(loss_sum / n, ref, rtol=1e-5, atol=1e-6)
    for g, p in zip(packed_grads, params):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)
    assert sum(float(g.abs().sum()) for g in packed_grads) > 0
    # Reading the last column under right padding (the authors' trainer) trains shorter rows on a pad token.
    wrong = dense_kl_loss(logits[:, -1], dense)
    assert abs(float(wrong.detach()) - float(ref.detach())) > 1e-3


def test_decoder_path_equals_logits_to_keep(expert, tokenizer, samples_file, monkeypatch):
    trajs, _ = tj.load_training_examples(samples_file, tokenizer)
    model = lora_model(expert)
    batch = packing.collate(trajs, [packing.Piece(i, 0, t.n_steps) for i, t in enumerate(trajs)],
                            tokenizer.pad_token_id)
    with torch.no_grad():
        fast = packing.kept_logits(model, batch.input_ids, batch.keep)
        monkeypatch.setattr(packing, "_BOOL_KEEP", False)
        slow = packing.kept_logits(model, batch.input_ids, batch.keep)
        full = model(input_ids=batch.input_ids).logits[batch.keep]
    assert fast.shape == (batch.n_steps, expert.config.vocab_size)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(slow, full, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Training


def mean_loss(model, trajs, pad_id) -> float:
    with torch.no_grad():
        b = packing.collate(trajs, [packing.Piece(i, 0, t.n_steps) for i, t in enumerate(trajs)], pad_id)
        s, n = packing.packed_loss(model, b)
    return float(s) / n


def test_the_mask_path_is_taken_only_for_forwards_that_slice_with_transformers():
    from transformers import Qwen2ForCausalLM

    class SlicesItself(Qwen2ForCausalLM):  # as a few models and older remote code do: an int only
        def forward(self, input_ids=None, logits_to_keep=0, **kw):
            return super().forward(input_ids=input_ids, **kw).logits[:, slice(-logits_to_keep, None)]

    class NoKeep(Qwen2ForCausalLM):
        def forward(self, input_ids=None, **kw):
            return super().forward(input_ids=input_ids, **kw)

    assert packing._slices_by_mask(Qwen2ForCausalLM)
    assert not packing._slices_by_mask(SlicesItself) and not packing._slices_by_mask(NoKeep)


def test_training_lowers_the_loss_and_only_touches_lora(tmp_path, expert, tokenizer, samples_file):
    trajs, stats = tj.load_training_examples(samples_file, tokenizer)
    model = copy.deepcopy(expert)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss0 = mean_loss(model, trajs, tokenizer.pad_token_id)
    c = cfg(tmp_path, max_steps=25, lr=3e-2, tensorboard=True, log_every=5)
    summary = training.train(model, tokenizer, trajs, tr.train_params(c), c.output, data_stats=stats)
    loss1 = mean_loss(model, trajs, tokenizer.pad_token_id)
    assert loss1 < 0.8 * loss0, (loss0, loss1)
    # the frozen base weights are untouched; only LoRA weights moved
    base = model.state_dict()  # LoRA layers were injected in place
    for k, v in before.items():
        name = k.replace("q_proj.", "q_proj.base_layer.").replace("v_proj.", "v_proj.base_layer.")
        torch.testing.assert_close(base[name], v, rtol=0, atol=0)
    assert all(float(v.abs().sum()) > 0 for k, v in adapter_tensors(tmp_path / "out").items() if "lora_B" in k)
    assert {k.split(".")[-2] for k in adapter_tensors(tmp_path / "out")} == {"lora_A", "lora_B"}
    # records
    out = tmp_path / "out"
    assert summary["tuned_tokens"] == 25 * 6 and summary["updates"] == 25 and summary["trajectories"] == len(trajs)
    assert json.loads((out / "summary.json").read_text())["final_loss"] == summary["final_loss"]
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["update"] for m in metrics] == [5, 10, 15, 20, 25]
    per_epoch = sum(t.n_steps for t in trajs)  # epochs as transformers logs them, straddling updates included
    assert per_epoch < 25 * 6
    assert [m["epoch"] for m in metrics] == [round(u * 6 / per_epoch, 4) for u in range(5, 26, 5)]
    assert metrics[0]["lr"] > metrics[-1]["lr"] > 0 and all(m["grad_norm"] > 0 for m in metrics)
    assert any((out / "tensorboard").iterdir())
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["config"]["lora_targets"] == ["q_proj", "v_proj"] and "environment" in saved
    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(copy.deepcopy(expert), out)
    assert abs(mean_loss(reloaded, trajs, tokenizer.pad_token_id) - loss1) < 1e-5


def test_a_non_finite_loss_stops_training_naming_the_update(tmp_path, expert, tokenizer, samples_file):
    trajs, _ = tj.load_training_examples(samples_file, tokenizer)
    c = cfg(tmp_path, lr=1e30, save_every=1)
    with pytest.raises(InputError, match=r"(loss|gradient norm) is (nan|inf) at update 2: the learning rate "
                                         r"\(--lr 1e\+30\) or LoRA scale \(--lora-alpha 16"):
        training.train(copy.deepcopy(expert), tokenizer, trajs, tr.train_params(c), c.output)
    out = tmp_path / "out"  # nothing of the broken state was written: no adapter, no summary, no step-000002
    assert [p.name for p in out.glob("step-*")] == ["step-000001"] and not (out / "summary.json").exists()
    assert not (out / "adapter_model.safetensors").exists()
    trajs[0].label_weights[0] = [math.nan] * len(trajs[0].label_weights[0])  # a poisoned label
    first = next(u.index + 1 for u in packing.plan_updates([t.n_steps for t in trajs], 6, max_steps=4, seed=42)
                 if any(p.traj == 0 and p.start == 0 for p in u.pieces))
    c = cfg(tmp_path, output=str(tmp_path / "poisoned"))
    with pytest.raises(InputError, match=f"loss is nan at update {first}: .*non-finite labels"):
        training.train(copy.deepcopy(expert), tokenizer, trajs, tr.train_params(c), c.output)


def test_authors_format_trains_through_the_cli(tmp_path, model_dirs, tokenizer, records):
    from lightreasoner import cli

    path = write_jsonl(tmp_path / "authors.jsonl", to_authors(tokenizer, records))
    rc = cli.main(["train", "--samples", str(path), "--expert", model_dirs[0], "--output", str(tmp_path / "o"),
                   "--max-steps", "2", "--dtype", "float32", "--no-tensorboard", "--log-every", "1"])
    assert rc == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["data"]["format"] == "authors" and summary["tuned_tokens"] == 32
    assert (tmp_path / "o" / "adapter_config.json").is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path, model_dirs, samples_file):
    from lightreasoner import cli

    args = ["train", "--samples", str(samples_file), "--expert", model_dirs[0], "--max-steps", "3",
            "--steps-per-update", "7", "--lora-dropout", "0", "--lr", "1e-2", "--dtype", "float32",
            "--no-tensorboard", "--max-tokens-per-forward", "300"]
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), "-m", "lightreasoner", *args, "--output", str(tmp_path / "two")],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert cli.main([*args, "--output", str(tmp_path / "one")]) == 0
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["world_size"] == 2 and two["tuned_tokens"] == 21
    a, b = adapter_tensors(tmp_path / "one"), adapter_tensors(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    m1, m2 = ([json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
              for d in ("one", "two"))
    for key in ("loss", "grad_norm", "lr"):  # the gradient's scale too (Adam alone would hide a wrong one)
        assert [m[key] for m in m1] == pytest.approx([m[key] for m in m2], rel=1e-5)
    assert any(float(v.abs().sum()) > 0 for k, v in a.items() if "lora_B" in k)


# ---------------------------------------------------------------------------------------------------------------
# Merge


def test_merge_equals_base_plus_adapter(tmp_path, model_dirs, expert, tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = tmp_path / "adapter"
    lora_model(expert, lora_targets="all-linear").save_pretrained(adapter)
    out = tmp_path / "merged"
    mg.merge_main(resolve(mg.MergeConfig, cli=dict(expert=model_dirs[0], adapter=str(adapter), output=str(out))))
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in k for k in merged.state_dict())
    ref = PeftModel.from_pretrained(copy.deepcopy(expert), adapter).eval()
    ids = torch.randint(0, 300, (2, 17))
    with torch.no_grad():
        a, b, base = merged(input_ids=ids).logits, ref(input_ids=ids).logits, expert(input_ids=ids).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert (a - base).abs().max() > 1e-3  # the adapter did change the model
    assert AutoTokenizer.from_pretrained(out).chat_template == tokenizer.chat_template
    with pytest.raises(InputError, match="no adapter_config.json"):
        mg.merge_main(resolve(mg.MergeConfig, cli=dict(expert=model_dirs[0], adapter=str(out), output=str(out))))


def test_train_and_merge_refuse_an_output_another_run_is_writing(tmp_path, model_dirs, samples_file):
    from lightreasoner.utils import output_lock

    with output_lock(tmp_path / "out", "train"), pytest.raises(InputError, match="out is being written by"):
        tr.main(cfg(tmp_path, samples=str(samples_file), expert=model_dirs[0]))
    with output_lock(tmp_path / "m", "merge"), pytest.raises(InputError, match="m is being written by"):
        mg.merge_main(resolve(mg.MergeConfig, cli=dict(expert=model_dirs[0], adapter="a", output=str(tmp_path / "m"))))
