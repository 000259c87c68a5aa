"""Packed training against the authors' trainer on the same kept steps: time per epoch and peak memory.

The authors' way (LightR_finetuning.py): one sequence per kept step, batches of 8 with 2 accumulation steps,
full ``[batch, length, vocab]`` logits, dense vocabulary-sized labels, the loss read at each row's last real token
(their right-padding bug corrected, so both methods optimise the same objective). Packed (``lightreasoner train``):
one forward per trajectory, logits only at kept positions, sparse labels, ``--steps-per-update`` kept steps per
update. Both use LoRA r 8 on q_proj/v_proj, AdamW, clipping 1.0, the same model dtype and the same kept steps.

Both use the same attention kernels (``train.attention_backends``). Each method runs in a fresh subprocess (peak
memory is then its own: ``torch.cuda.max_memory_allocated`` on GPU, the process's peak RSS on CPU), after two
warm-up updates that are not timed.

    python benchmarks/bench_train.py --shape tiny --kept-steps 256            # seconds on a laptop CPU
    python benchmarks/bench_train.py --shape 1.5b --kept-steps 512 --device cuda --results benchmarks/results.md
    python benchmarks/bench_train.py --model qwen2.5-coder-1.5b-instruct --kept-steps 256

Trajectories are random but shaped like the paper's: a ~100-token prompt, 128 completion tokens, ~10% of the
completion positions kept, labels of 1-3 tokens.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from lightreasoner import models, packing, training  # noqa: E402
from lightreasoner.trajectories import Trajectory  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="tiny", choices=("tiny", "0.5b", "1.5b"),
                    help="random Qwen2.5-shaped model (ignored with --model)")
    ap.add_argument("--model", default=None, help="a real model spec instead (embedded name, folder, hub id, .gguf)")
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary rows of the random model (default: 151936 "
                                                            "for 0.5b/1.5b, 512 for tiny)")
    ap.add_argument("--kept-steps", type=int, default=256, help="kept steps in the epoch")
    ap.add_argument("--prompt-tokens", type=int, default=100)
    ap.add_argument("--completion-tokens", type=int, default=128)
    ap.add_argument("--kept-fraction", type=float, default=0.10)
    ap.add_argument("--steps-per-update", type=int, default=16)
    ap.add_argument("--authors-batch", type=int, default=8, help="the authors' per-device batch (accumulation = "
                                                                  "steps-per-update / this)")
    ap.add_argument("--max-tokens-per-forward", type=int, default=4096)
    ap.add_argument("--dtype", default="auto", choices=models.DTYPES)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", default=None, help="append a markdown row to this file")
    ap.add_argument("--method", default=None, choices=("packed", "authors"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def build_model(args):
    device = models.default_device() if args.device == "auto" else args.device
    dtype = models.resolve_dtype(args.dtype, device.split(":")[0])
    if args.model:
        loaded = models.load_model(args.model, dtype=models.dtype_name(dtype), device=device)
        return loaded.model, loaded.tokenizer.pad_token_id or 0, device, dtype, args.model
    from lightreasoner.testing import tiny_causal_lm

    vocab = args.vocab or (512 if args.shape == "tiny" else 151936)
    with torch.device(device):  # initialise the random weights where they will live (fast on GPU)
        model = tiny_causal_lm(vocab_size=vocab, seed=args.seed, size=args.shape, dtype=dtype)
    return model, 0, device, dtype, f"random Qwen2.5-{args.shape} shape (vocab {vocab})"


def make_trajectories(args, vocab: int) -> list[Trajectory]:
    """Random trajectories with exactly ``--kept-steps`` kept steps in all."""
    rng = random.Random(args.seed)
    trajs, left = [], args.kept_steps
    per = max(1, round(args.completion_tokens * args.kept_fraction))
    while left > 0:
        n = min(left, max(1, per + rng.randint(-per // 2, per // 2)))
        prompt = args.prompt_tokens + rng.randint(-20, 20)
        tokens = [rng.randrange(vocab) for _ in range(prompt + args.completion_tokens)]
        pos = sorted(prompt - 1 + p for p in rng.sample(range(args.completion_tokens), n))
        labels = []
        for _ in pos:
            ids = rng.sample(range(vocab), rng.randint(1, 3))
            w = [rng.random() + 0.05 for _ in ids]
            labels.append((ids, [x / sum(w) for x in w]))
        trajs.append(Trajectory(f"t{len(trajs)}", tokens[:pos[-1] + 1], pos, [a for a, _ in labels],
                                   [b for _, b in labels]))
        left -= n
    return trajs


def peak_memory(device: str) -> int:
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def packed_updates(model, trajs, args, pad_id, device):
    """One epoch of packed training as `lightreasoner train` runs it (one process)."""
    plan = packing.plan_updates([t.n_steps for t in trajs], args.steps_per_update, epochs=1, seed=args.seed)

    def run(update):
        tokens = 0
        for mb in packing.micro_batches(trajs, update.pieces, args.max_tokens_per_forward):
            batch = packing.collate(trajs, mb, pad_id).to(device)
            loss, _ = packing.packed_loss(model, batch)
            (loss / update.n_steps).backward()
            tokens += batch.input_ids.numel()
        return tokens
    return plan, run


def authors_updates(model, trajs, args, pad_id, device):
    """One epoch the authors' way: a sequence per kept step, dense labels, full logits."""
    import torch.nn.functional as F

    vocab = model.get_output_embeddings().weight.shape[0]
    examples = [(t.input_ids[:p + 1], ids, w) for t in trajs for p, ids, w in
                zip(t.positions, t.label_ids, t.label_weights)]
    random.Random(args.seed).shuffle(examples)  # their Trainer samples steps at random
    spu, bs = args.steps_per_update, args.authors_batch
    plan = [examples[i:i + spu] for i in range(0, len(examples), spu)]

    def run(update):
        tokens = 0
        chunks = [update[i:i + bs] for i in range(0, len(update), bs)]
        for chunk in chunks:
            width = max(len(x[0]) for x in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            labels = torch.zeros(len(chunk), vocab)  # the authors build a dense vocabulary-sized label per step
            for i, (seq, lid, lw) in enumerate(chunk):
                ids[i, :len(seq)] = torch.tensor(seq)
                mask[i, :len(seq)] = 1
                labels[i, lid] = torch.tensor(lw)
            ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits  # [B, L, V]
            last = logits[torch.arange(len(chunk), device=device), mask.sum(1) - 1]  # corrected: own last token
            loss = F.kl_div(torch.log_softmax(last.float(), -1), labels, reduction="batchmean")
            (loss / len(chunks)).backward()
            tokens += ids.numel()
        return tokens
    return plan, run


def child(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    model, pad_id, device, dtype, name = build_model(args)
    vocab = model.get_output_embeddings().weight.shape[0]
    trajs = make_trajectories(args, min(vocab, 151643))
    cfg = training.TrainParams(lora_dropout=0.05)
    torch.manual_seed(args.seed)
    model = training.apply_lora(model, cfg)
    model.config.use_cache = False
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    make = packed_updates if args.method == "packed" else authors_updates
    plan, run = make(model, trajs, args, pad_id, device)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, training.linear_schedule(len(plan)))

    def step(update) -> int:
        with packing.attention_backends(device):  # the same attention kernels for both methods
            tokens = run(update)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return tokens

    for update in plan[:2]:  # warm-up (kernels, allocator), not timed
        step(update)
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    tokens = sum(step(u) for u in plan)
    sync(device)
    seconds = time.perf_counter() - t0
    return {"method": args.method, "seconds": seconds, "peak_bytes": peak_memory(device), "updates": len(plan),
            "forward_tokens": tokens, "kept_steps": sum(t.n_steps for t in trajs), "trajectories": len(trajs),
            "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else
            f"cpu x{torch.get_num_threads()}", "dtype": models.dtype_name(dtype), "model": name}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.method:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return 0
    argv = list(sys.argv[1:] if argv is None else argv)
    res = {}
    for method in ("authors", "packed"):
        proc = subprocess.run([sys.executable, __file__, *argv, "--method", method], capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines()[::-1] if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            return 1
        res[method] = json.loads(line[len("RESULT "):])
    a, p = res["authors"], res["packed"]
    speed = a["seconds"] / p["seconds"]
    mem = a["peak_bytes"] / p["peak_bytes"]
    gb = 2 ** 30
    print(f"model: {p['model']}  dtype {p['dtype']}  device {p['device']}")
    print(f"kept steps {p['kept_steps']} in {p['trajectories']} trajectories; {p['updates']} updates of "
          f"{args.steps_per_update} (one epoch)")
    print(f"{'method':8s} {'s/epoch':>10s} {'peak GB':>9s} {'fwd tokens':>11s}")
    for m in (a, p):
        print(f"{m['method']:8s} {m['seconds']:10.2f} {m['peak_bytes'] / gb:9.2f} {m['forward_tokens']:11d}")
    print(f"packed is {speed:.1f}x faster per epoch, with {mem:.2f}x less peak memory")
    if args.results:
        path = Path(args.results)
        new = not path.exists()
        with open(path, "a") as fh:
            if new:
                fh.write("| model | device | dtype | kept steps | authors s/epoch | packed s/epoch | speed-up | "
                         "authors peak GB | packed peak GB | memory ratio |\n|" + " --- |" * 10 + "\n")
            fh.write(f"| {p['model']} | {p['device']} | {p['dtype']} | {p['kept_steps']} | {a['seconds']:.2f} | "
                     f"{p['seconds']:.2f} | {speed:.1f}x | {a['peak_bytes'] / gb:.2f} | {p['peak_bytes'] / gb:.2f} | "
                     f"{mem:.2f}x |\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
