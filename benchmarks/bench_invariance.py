"""Batch invariance on a device: does a row get the same bits alone and in a crowd? Native kernels against the
fixed-shape path (``invariant.reduction_tile`` > 0, what CUDA takes), side by side in one run.

    python benchmarks/bench_invariance.py --device cuda --out inv.json     # H100/H200: the Qwen2.5-1.5B shape
    python benchmarks/bench_invariance.py --smoke --out inv.json           # CPU, tiny shapes, the same code

``native`` sets ``reduction_tile`` to 0 (every row reduction in one call, as the code was before the GPU check);
``fixed`` uses the device's tile (``--smoke``: a tile of 4, so the CPU runs the fixed path too). Figures, each the
fraction of cases whose bits equal the row alone (1 = invariant):

- ``ops.<op>.<path>``: one op on a row of random data with crowds of 1..130 other rows: ``mean`` (RMSNorm's, float32,
  hidden width), ``linear`` (bf16, hidden -> 4 x hidden; ``native`` = plain ``F.linear``), ``attention`` (the
  decoding attention over a float32 cache, lengths up to 700), ``scoring`` (``reduce_steps`` over the vocabulary).
- ``decode.<path>``: ``testing.invariance_runs`` on a random model (8 prompts; batch sizes 1, 3, 8, two orders, a
  resume): the share of runs whose every logit equals the batch-1 reference; ``completions.<path>``: the share
  whose completions do.
- ``sampling.<path>``: ``sampling.sample_batch`` (teacher-forced amateur) on 6 problems at batch size 6 against
  batches of 2: 1 if every record (completions, KL lists, kept steps and labels) is equal.
- ``textpath.<path>``: the same on the text path (``testing.two_tokenizers``: the amateur splits tokens the expert
  merges; the expert steered to them), over the models' whole output widths (the rows past the small
  tokenizers are unmapped): 1 if every record, alignment codes and dropped mass included, is equal.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lightreasoner import decoder, invariant, sampling, utils  # noqa: E402
from lightreasoner.contrast import reduce_steps  # noqa: E402
from lightreasoner.invariant import RowInvariant, invariant_linear  # noqa: E402
from lightreasoner.models import default_device, dtype_name, resolve_dtype  # noqa: E402
from lightreasoner.prompts import build_prompt_ids  # noqa: E402
from lightreasoner.testing import invariance_runs, steer, tiny_causal_lm, two_tokenizers  # noqa: E402
from lightreasoner.textpath import text_path  # noqa: E402

SIZES = {"gpu": dict(shape="1.5b", amateur="0.5b", hidden=1536, vocab=151936, heads=(12, 2), tokens=16,
                     prompt=(80, 140), crowds=(1, 2, 3, 8, 16, 17, 64, 65, 130), lengths=700, tile=None),
         "smoke": dict(shape="tiny", amateur="tiny", hidden=64, vocab=512, heads=(4, 2), tokens=6, prompt=(8, 40),
                       crowds=(1, 2, 3, 8, 17), lengths=150, tile=4)}
NATIVE_TILE = invariant.reduction_tile


def path(name: str, size: dict):
    """Set the reduction tile for path ``name`` (``native``: 0, ``fixed``: the device's, or ``size['tile']``)."""
    if name == "native":
        invariant.reduction_tile = lambda device: 0
    else:
        invariant.reduction_tile = (lambda device: size["tile"]) if size["tile"] else NATIVE_TILE


def share_alone(fn, row: torch.Tensor, crowd: torch.Tensor, crowds) -> float:
    """The share of crowd sizes ``c`` for which ``fn`` gives row 0 the same bits with ``c`` other rows as alone."""
    alone = fn(row[None])[0]
    same = [torch.equal(fn(torch.cat([row[None], crowd[:c]]))[0], alone) for c in crowds]
    return sum(same) / len(same)


def op_checks(size: dict, device: torch.device, name: str) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)
    h, v, (hq, hkv), n = size["hidden"], size["vocab"], size["heads"], max(size["crowds"]) + 1
    x = torch.randn(n, h, generator=g).to(device)
    w = (torch.randn(4 * h, h, generator=g) / h ** 0.5).to(device, torch.bfloat16)
    logits = (torch.randn(n, 2, v, generator=g) * 4).to(device)
    d, width = 128, -(-size["lengths"] // 256) * 256
    keys, values = (torch.randn(n, hkv, width, d, generator=g).to(device) for _ in range(2))
    lengths = torch.randint(1, size["lengths"], (n,), generator=g).to(device)
    q = torch.randn(n, hq, d, generator=g).to(device, torch.bfloat16)

    def mean(rows):
        with RowInvariant():
            return rows.pow(2).mean(-1, keepdim=True)

    def linear(rows):
        return (F.linear if name == "native" else invariant_linear)(rows.to(torch.bfloat16), w)

    def attention(idx):  # rows are indices into the cache, each row at its own slot
        i = idx[:, 0].long()
        return decoder._decode_attention(q[i], keys[i], values[i], torch.arange(len(i), device=device), lengths[i],
                                         None, None)

    def scoring(rows):
        red = reduce_steps(rows[:, 0], rows[:, 1], 0.2)
        labels = F.pad(red.label_weights, (0, 32))[:, :32]  # a fixed width: the label's width is the widest row's
        return torch.cat([red.kl[:, None], red.expert_entropy[:, None], red.amateur_entropy[:, None], labels], 1)

    idx = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    return {f"ops.mean.{name}": share_alone(mean, x[0], x[1:], size["crowds"]),
            f"ops.linear.{name}": share_alone(linear, x[0], x[1:], size["crowds"]),
            f"ops.attention.{name}": share_alone(attention, idx[0], idx[1:], size["crowds"]),
            f"ops.scoring.{name}": share_alone(scoring, logits[0], logits[1:], size["crowds"])}


def end_to_end(size: dict, expert, amateur, name: str) -> dict:
    g = torch.Generator().manual_seed(3)
    v = size["vocab"]
    prompts = [torch.randint(0, v - 2, (int(torch.randint(*size["prompt"], (1,), generator=g)),), generator=g).tolist()
               for _ in range(8)]
    eos, pad = [v - 1], v - 2  # random models: ids no prompt holds
    (ref, ref_logits), runs = invariance_runs(expert, prompts, max_new_tokens=size["tokens"], eos_ids=eos,
                                              pad_id=pad)
    same_logits = [lg.keys() == ref_logits.keys() and all(lg[k] == ref_logits[k] for k in ref_logits)
                   for _, lg in runs]
    vocab = min(m.get_output_embeddings().weight.shape[0] for m in (expert, amateur))
    params = sampling.ScoringParams(max_new_tokens=size["tokens"], amateur_pass="teacher-forced", beta=0.0)

    def records(batch: int) -> list:
        trajs = [t for i in range(0, 6, batch)
                 for t in sampling.sample_batch(expert, amateur, prompts[i:i + batch], eos, pad, vocab, params)]
        return [(t.completion, t.kl, t.steps) for t in trajs]

    return {f"decode.{name}": sum(same_logits) / len(runs),
            f"completions.{name}": sum(done == ref for done, _ in runs) / len(runs),
            f"sampling.{name}": float(records(6) == records(2))}


def text_path_check(size: dict, expert, amateur, name: str) -> dict:
    tok_e, tok_a = two_tokenizers()
    rows = [m.get_output_embeddings().weight.shape[0] for m in (expert, amateur)]
    text = text_path(tok_e, tok_a, expert_rows=rows[0], amateur_rows=rows[1], expert_eos=[tok_e.eos_token_id],
                     amateur_eos=[tok_a.eos_token_id])
    questions = ["What is 3+4?", "Sara had 20 dollars.", "x", "A box holds 6 eggs.", "Add 12 and 23.", "the 12th"]
    prompts, a_prompts = ([build_prompt_ids(t, q) for q in questions] for t in (tok_e, tok_a))
    params = sampling.ScoringParams(max_new_tokens=size["tokens"], beta=0.0, chunk_steps=7)
    steer(expert, tok_e.convert_tokens_to_ids(["Ġth", "Ġt", "12", "Ġ", "a", "1", "3", "h", "e"]))

    def records(batch: int) -> list:
        trajs = [t for i in range(0, 6, batch)
                 for t in sampling.sample_batch(expert, amateur, prompts[i:i + batch], [tok_e.eos_token_id],
                                                tok_e.pad_token_id, 0, params, text=text,
                                                amateur_prompts=a_prompts[i:i + batch])]
        return [(t.completion, t.kl, t.alignment, t.dropped, t.steps) for t in trajs]

    try:
        return {f"textpath.{name}": float(records(6) == records(2))}
    finally:
        expert.get_output_embeddings().bias = None


def run(args: argparse.Namespace) -> dict:
    size = SIZES["smoke" if args.smoke else "gpu"]
    device = torch.device(args.device or ("cpu" if args.smoke else default_device()))
    dtype = resolve_dtype(args.dtype, device.type)
    t0 = time.perf_counter()
    with torch.device(device):  # random init where the weights live
        expert, amateur = (tiny_causal_lm(vocab_size=size["vocab"], seed=seed, size=shape, dtype=dtype).to(device)
                           for seed, shape in ((1, size["shape"]), (2, size["amateur"])))
    label = f"random Qwen2.5-{size['shape']} / {size['amateur']} shapes, vocabulary {size['vocab']}"
    figures = {}
    try:
        for name in ("native", "fixed"):
            path(name, size)
            for part in (op_checks(size, device, name), end_to_end(size, expert, amateur, name),
                         text_path_check(size, expert, amateur, name)):
                figures.update(part)
                print(json.dumps(part), flush=True)
    finally:
        invariant.reduction_tile = NATIVE_TILE
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "models": label,
            "dtype": dtype_name(dtype), "tile": size["tile"] or NATIVE_TILE(device),
            "environment": utils.environment_info(), "figures": figures, "wall_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="write the JSON here too")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, the fixed path forced (tile 4)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="auto")
    out = run(ap.parse_args(argv))
    if out_path := ap.parse_args(argv).out:
        utils.write_json(out_path, out)
    for k, v in out["figures"].items():
        print(f"{k:28s} {v:.3f}")
    print(f"RESULT {json.dumps(out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
