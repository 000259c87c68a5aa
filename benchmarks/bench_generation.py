"""A prefill's output layer, frozen or not, with and without the contiguous copy, side by side.

A prefill keeps only the last position's logits (``logits_to_keep=1``), so the output layer reads
``hidden[:, -1:, :]``, a strided ``[B, 1, H]`` view. On CPU, ``torch.matmul`` folds such an input into one
``[B, H] x [H, V]`` product only when the weight requires grad; for a frozen model (``requires_grad_(False)``, or
one PEFT merged, which is what ``eval --adapter`` evaluated before session 5) it runs a batched product over ``B``
expanded copies of the ``[V, H]`` weight instead (oneDNN first tries to materialise them: ``B x V x H x 2`` bytes,
30 GB for 64 rows of Qwen2.5's 151,936 x 1,536 bf16 head, fails and falls back to ``baddbmm``).

Arms, each timing :class:`lightreasoner.generation.CachedDecoder`-style prefills of the same left-padded batch:
- ``trainable``: weights require grad, the decoder's prefill (contiguous copy);
- ``frozen``: weights frozen, the decoder's prefill (contiguous copy; what every stage does now);
- ``frozen, strided``: weights frozen, the model's own forward with ``logits_to_keep=1`` (no copy: the old path).
It prints the median time of each, the slow-down against ``frozen`` and the largest logit difference.

    PYTHONPATH=src python benchmarks/bench_generation.py --shape tiny
    PYTHONPATH=src python benchmarks/bench_generation.py --model qwen2.5-coder-1.5b-instruct --batch-size 16

``--shape tiny|0.5b|1.5b`` builds a random Qwen2 model of that shape (vocabulary 151,936 unless tiny);
``--model`` takes any model spec.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time

import torch

from lightreasoner.generation import CachedDecoder, left_pad
from lightreasoner.models import load_model
from lightreasoner.testing import tiny_causal_lm


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="model spec (embedded name, folder, .gguf, hub id)")
    src.add_argument("--shape", choices=("tiny", "0.5b", "1.5b"), default="tiny", help="random Qwen2 shape")
    p.add_argument("--batch-size", type=int, default=16, help="prompts prefilled together")
    p.add_argument("--prompt-len", type=int, default=120, help="longest prompt (others are shorter, left padded)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--results", default=None, help="append a markdown row to this file")
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, str]:
    if args.model:
        return load_model(args.model, dtype=args.dtype, device="cpu").model, args.model
    vocab = 320 if args.shape == "tiny" else 151936
    model = tiny_causal_lm(vocab_size=vocab, size=args.shape, dtype=getattr(torch, args.dtype))
    return model, f"random {args.shape}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model, name = build(args)
    model.eval()
    vocab = model.get_output_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(args.prompt_len // 2, args.prompt_len + 1, (args.batch_size,), generator=g).tolist()
    lens[0] = args.prompt_len
    prompts = [torch.randint(0, min(vocab, 30000), (n,), generator=g).tolist() for n in lens]
    ids, mask = left_pad(prompts, 0, "cpu")
    pos = (mask.cumsum(-1) - 1).clamp(min=0)

    def decoder_prefill() -> torch.Tensor:
        dec = CachedDecoder(model)
        try:
            return dec.prefill(ids, mask)
        finally:
            dec.close()

    @torch.inference_mode()
    def strided_prefill() -> torch.Tensor:
        return model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]

    arms = [("trainable", True, decoder_prefill), ("frozen", False, decoder_prefill),
            ("frozen, strided", False, strided_prefill)]
    times: dict[str, float] = {}
    logits: dict[str, torch.Tensor] = {}
    for label, trainable, fn in arms:
        model.requires_grad_(trainable)
        fn()  # warm-up
        secs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            logits[label] = fn().float()
            secs.append(time.perf_counter() - t0)
        times[label] = statistics.median(secs)
        print(f"{label:>16}: {times[label]:8.3f} s per prefill", flush=True)
    base = times["frozen"]
    diff = max(float((logits[k] - logits["frozen"]).abs().max()) for k in logits)
    print(f"\n{name}, {args.batch_size} prompts of <= {args.prompt_len} tokens, vocabulary {vocab}, {args.dtype}, "
          f"{torch.get_num_threads()} threads")
    for label in times:
        print(f"  {label:>16}: {times[label] / base:7.1f} x the frozen decoder's time")
    print(f"  largest logit difference between arms: {diff:.3g}")
    if args.results:
        machine = platform.processor() or platform.machine()
        row = (f"| {datetime.date.today()} | {name} | {args.batch_size} x {args.prompt_len} | "
               + " | ".join(f"{times[k]:.3f}" for k in times)
               + f" | {times['frozen, strided'] / base:.1f}x | {diff:.3g} | {machine} | `{' '.join(sys.argv)}` |\n")
        with open(args.results, "a") as f:
            f.write(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
