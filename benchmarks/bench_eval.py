"""Evaluation's decoding three ways, side by side on the same model and problems.

Times the evaluation's generation (:func:`lightreasoner.generation.generate_texts`: greedy, stop strings) on the
same prompts as
- ``continuous``: continuous batching with ``--batch-size`` slots (what ``eval`` does: a finished row's slot is
  refilled from the waiting prompts);
- ``fixed``: the same slots as fixed batches (a batch is refilled only once all its rows are done; what most
  scripts do, and what ``eval`` did before);
- ``one at a time``: batch size 1 (skip with ``--no-single``; slow on real models);
and prints the times, the speed-ups, how many completions agree with ``continuous`` (greedy decoding should give
the same tokens; bf16 may differ in a few places because padded batches round differently), and the grading time
and accuracy (graded once).

    PYTHONPATH=src python benchmarks/bench_eval.py --shape tiny --limit 16 --max-new-tokens 64
    PYTHONPATH=src python benchmarks/bench_eval.py --model qwen2.5-coder-1.5b-instruct --limit 64 \\
        --max-new-tokens 512 --batch-size 32 --prompt chat --no-single

``--shape tiny|0.5b|1.5b`` uses a random Qwen2 model of that shape with the byte-level test tokenizer (no
download); ``--model`` takes any model spec. Problems come from ``--data-dir`` (the toolkit's layout; default
``../shared/data/bench`` next to the repo) or, when absent, a few built-in GSM8K-style rows.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

from lightreasoner import benchmarks as B
from lightreasoner import generation
from lightreasoner import prompts as P
from lightreasoner import grading
from lightreasoner.models import default_device, dtype_name, load_model, resolve_dtype
from lightreasoner.testing import byte_tokenizer, gsm8k_style_rows, tiny_causal_lm

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="model spec (embedded name, folder, .gguf, hub id)")
    src.add_argument("--shape", choices=("tiny", "0.5b", "1.5b"), default="tiny", help="random Qwen2 shape")
    p.add_argument("--vocab-size", type=int, default=None, help="rows of a random model (default: 320 for tiny, "
                                                                 "151936 otherwise)")
    p.add_argument("--benchmark", default="gsm8k", choices=B.ALL_BENCHMARKS)
    p.add_argument("--data-dir", default=str(DEFAULT_DATA) if DEFAULT_DATA.is_dir() else None)
    p.add_argument("--limit", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-batch-tokens", type=int, default=65536)
    p.add_argument("--prompt", default="qwen25-math", choices=P.PROMPT_TYPES)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default=None)
    p.add_argument("--no-single", action="store_true", help="skip the one-at-a-time arm")
    p.add_argument("--results", default=None, help="append a markdown row to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device or default_device()
    if args.model:
        loaded = load_model(args.model, dtype=args.dtype, device=device)
        model, tok, name = loaded.model, loaded.tokenizer, args.model
    else:
        dtype = resolve_dtype(args.dtype, device)
        vocab = args.vocab_size or (320 if args.shape == "tiny" else 151936)
        model = tiny_causal_lm(vocab_size=vocab, size=args.shape, dtype=dtype).to(device)
        tok, name = byte_tokenizer(), f"random-{args.shape}"
    if args.data_dir:
        examples = B.load_benchmark(args.benchmark, args.data_dir, args.limit)
        bench = args.benchmark
    else:
        examples, bench = [dict(r, idx=i) for i, r in enumerate(gsm8k_style_rows())][:args.limit], "gsm8k"
    precision = dtype_name(model)
    print(f"{name} on {device} ({precision}), {bench}: {len(examples)} problems, "
          f"max {args.max_new_tokens} new tokens, batch {args.batch_size}", flush=True)

    texts = [B.build_prompt(bench, ex, tok, args.prompt) for ex in examples]
    examples = [ex for ex, t in zip(examples, texts) if t]  # the toolkit skips empty questions
    prompts = P.encode_prompts(tok, [t for t in texts if t], args.prompt)
    gen_kw = dict(max_new_tokens=args.max_new_tokens, max_batch_tokens=args.max_batch_tokens)
    generation.generate_texts(model, tok, prompts[:2], max_new_tokens=4, batch_size=2)  # warm-up (kernels, allocator)
    arms = [("continuous", args.batch_size, None), ("fixed", args.batch_size, args.batch_size)]
    if not args.no_single:
        arms.append(("one at a time", 1, None))
    timings, outputs = {}, {}
    for label, bs, refill in arms:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        outputs[label] = generation.generate_texts(model, tok, prompts, batch_size=bs, refill=refill, **gen_kw)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        timings[label] = time.perf_counter() - t0
        print(f"{label}: {timings[label]:.1f} s", flush=True)
    # Grading costs the same either way: done once, timed apart.
    t0 = time.perf_counter()
    verdicts = grading.grade_many(bench, [dict(ex) for ex in examples], [o.text for o in outputs["continuous"]],
                                  progress=False)
    grade_s = time.perf_counter() - t0
    accuracy = 100.0 * sum(v.correct for v in verdicts) / max(len(verdicts), 1)

    ref = outputs["continuous"]
    print(f"{'generation':14s} {'seconds':>9s} {'new tokens':>11s} {'tokens/s':>9s} {'speed-up':>9s} {'same':>7s}")
    cells = []
    for label, _, _ in arms:
        toks = sum(o.new_tokens for o in outputs[label])
        same = sum(x.ids == y.ids for x, y in zip(ref, outputs[label]))
        ratio = timings[label] / timings["continuous"]
        print(f"{label:14s} {timings[label]:9.2f} {toks:11d} {toks / timings[label]:9.1f} {ratio:8.2f}x "
              f"{same:3d}/{len(ref)}")
        cells.append((label, timings[label], toks, ratio, same))
    print(f"grading {grade_s:.2f} s, accuracy {accuracy:.1f}")
    if args.results:
        path = Path(args.results)
        dev = torch.cuda.get_device_name(0) if device.startswith("cuda") else device
        arms_txt = "; ".join(f"{lab} {t:.1f} s ({tk / t:.1f} tok/s, {r:.2f}x, same {sm}/{len(ref)})"
                             for lab, t, tk, r, sm in cells)
        with open(path, "a") as fh:
            fh.write(f"| {datetime.date.today()} | {name} | {dev} | {precision} | {bench} | {len(examples)} | "
                     f"{args.max_new_tokens} | {args.batch_size} | {arms_txt} | {accuracy:.1f} |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
