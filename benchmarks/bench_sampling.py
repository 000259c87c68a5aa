"""Sampling speed, side by side in one run: the authors' per-prefix scoring, ours, and bare generation.

    # random weights of the Qwen2.5-1.5B / 0.5B shapes
    python benchmarks/bench_sampling.py --shape 1.5b --amateur-shape 0.5b --problems 16 --batch-size 16
    # the embedded pair
    python benchmarks/bench_sampling.py --expert qwen2.5-coder-1.5b-instruct --amateur qwen2.5-coder-0.5b-instruct

Methods, on the same models and problems (``--max-new-tokens`` steps each):

- ``bare``: the expert's greedy generation alone, batched (``generation.generate``): the floor.
- ``ours/<pass>``: ``sample.sample_batch`` with the amateur ``teacher-forced`` (one pass per batch) and ``lockstep``.
- ``authors``: one problem at a time: the expert generates (batch 1, KV cache); then the amateur runs one
  forward per prefix, 64 prefixes per call, reading the last position. Its time is linear in the number of
  problems, so on slow hardware it runs on ``--authors-problems`` of them and is scaled (said in the output).

Prints the times and the ratios ``authors / ours`` (target >= 20) and ``ours / bare`` (target <= 1.5).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lightreasoner.contrast import reduce_step  # noqa: E402
from lightreasoner.generation import generate, left_pad  # noqa: E402
from lightreasoner.models import default_device, load_model, resolve_dtype  # noqa: E402
from lightreasoner.prompts import build_prompt_ids  # noqa: E402
from lightreasoner.sampling import ScoringParams, sample_batch  # noqa: E402
from lightreasoner.testing import tiny_causal_lm  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


@torch.inference_mode()
def authors_method(expert, amateur, prompt, eos, pad, vocab, max_new_tokens, alpha, prefix_batch=64):
    """One problem: expert generation at batch 1, then the amateur once per prefix (64 prefixes a call)."""
    expert_logits = []
    comp = generate(expert, [prompt], max_new_tokens=max_new_tokens, eos_ids=eos, pad_id=pad,
                    on_step=lambda v: expert_logits.append(v.logits[:, :vocab].float()))[0].ids
    kls = []
    for s in range(0, len(comp), prefix_batch):
        prefixes = [prompt + comp[:t] for t in range(s, min(s + prefix_batch, len(comp)))]
        ids, mask = left_pad(prefixes, pad, next(amateur.parameters()).device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        la = amateur(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1, :vocab]
        le = torch.cat(expert_logits[s:s + len(prefixes)])
        kls += reduce_step(le, la, alpha).kl.tolist()
    return comp, kls


def load_pair(args, device, dtype):
    if args.expert:
        e = load_model(args.expert, dtype=args.dtype, device=str(device))
        a = load_model(args.amateur, dtype=args.dtype, device=str(device))
        return e.model, a.model, e.tokenizer, f"{args.expert} / {args.amateur}"
    vocab = 151936
    e = tiny_causal_lm(vocab_size=vocab, seed=1, size=args.shape, dtype=dtype).to(device)
    a = tiny_causal_lm(vocab_size=vocab, seed=2, size=args.amateur_shape, dtype=dtype).to(device)
    return e, a, None, f"random Qwen2.5-{args.shape} / {args.amateur_shape} shapes"


def make_prompts(tokenizer, n, seed=0):
    if tokenizer is not None:
        rows = [json.loads(l) for l in (SHARED / "gsm8k_train.jsonl").read_text().splitlines()[:n]]
        return [build_prompt_ids(tokenizer, r["question"]) for r in rows]
    g = torch.Generator().manual_seed(seed)  # random ids of GSM8K-prompt length (~80-140 tokens)
    return [torch.randint(0, 150000, (int(torch.randint(80, 140, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--expert"), ap.add_argument("--amateur")
    ap.add_argument("--shape", default="1.5b"), ap.add_argument("--amateur-shape", default="0.5b")
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--authors-problems", type=int, default=None, help="problems timed for the authors' method")
    ap.add_argument("--passes", default="teacher-forced,lockstep")
    ap.add_argument("--dtype", default="auto"), ap.add_argument("--device", default=None)
    ap.add_argument("--results", default=None, help="append a markdown row per figure to this file")
    args = ap.parse_args()

    device = torch.device(args.device or default_device())
    dtype = resolve_dtype(args.dtype, device.type)
    expert, amateur, tok, label = load_pair(args, device, dtype)
    prompts = make_prompts(tok, args.problems)
    eos = [tok.eos_token_id] if tok is not None else [151645]
    pad = tok.pad_token_id if tok is not None else 151643
    vocab = min(expert.get_output_embeddings().weight.shape[0], amateur.get_output_embeddings().weight.shape[0])
    batches = [prompts[i:i + args.batch_size] for i in range(0, len(prompts), args.batch_size)]
    T = args.max_new_tokens
    print(f"{label}: {len(prompts)} problems, batch {args.batch_size}, {T} tokens, {dtype}, {device}")

    # Warm-up (kernels, allocator) on one short batch.
    sample_batch(expert, amateur, prompts[:2], eos, pad, vocab, ScoringParams(max_new_tokens=4))

    times = {}
    times["bare"], gens = timed(lambda: [generate(expert, b, max_new_tokens=T, eos_ids=eos, pad_id=pad)
                                         for b in batches], device)
    n_tokens = sum(len(c.ids) for g in gens for c in g)
    for mode in args.passes.split(","):
        params = ScoringParams(max_new_tokens=T, amateur_pass=mode)
        times[f"ours/{mode}"], trajs = timed(
            lambda: [tr for b in batches for tr in sample_batch(expert, amateur, b, eos, pad, vocab, params)], device)
    k = args.authors_problems or len(prompts)
    t_auth, auth = timed(lambda: [authors_method(expert, amateur, p, eos, pad, vocab, T, 0.2) for p in prompts[:k]],
                         device)
    times["authors"] = t_auth * len(prompts) / k
    # Same trajectories and KLs (bf16 kernels may differ in the last bits; compare loosely).
    same = sum(a[0] == t.completion for a, t in zip(auth, trajs))
    print(f"authors' completions equal to ours: {same}/{k}")

    best = min((m for m in times if m.startswith("ours/")), key=times.get)
    rows = [(m, s) for m, s in times.items()]
    print(f"{'method':24s} {'seconds':>9s} {'tokens/s':>9s}")
    for m, s in rows:
        note = f"  (timed on {k} problems, scaled x{len(prompts) / k:.1f})" if m == "authors" and k < len(prompts) \
            else ""
        print(f"{m:24s} {s:9.2f} {n_tokens / s:9.1f}{note}")
    speedup = times["authors"] / times[best]
    overhead = times[best] / times["bare"]
    print(f"authors / {best}: {speedup:.1f}x faster (target >= 20)")
    print(f"{best} / bare generation: {overhead:.2f}x (target <= 1.5)")
    if args.results:
        dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()}"
        with open(args.results, "a") as fh:
            fh.write(f"| {label} | {dev} | {dtype} | {len(prompts)}x{T} | "
                     + " | ".join(f"{m} {s:.1f}s" for m, s in rows)
                     + f" | {speedup:.1f}x | {overhead:.2f}x |\n")


if __name__ == "__main__":
    main()
