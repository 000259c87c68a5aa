"""The GPU check: batch invariance, and sampling, training and evaluation speed on random weights of the real
shapes, one JSON of figures.

    bash benchmarks/gpu_check.sh                     # one H100/H200: under 10 minutes, writes ./gpu_check.json
    bash benchmarks/gpu_check.sh --smoke --out x.json  # CPU, tiny shapes: the same code path in well under a minute

Nothing is downloaded and nothing large travels: the models are random Qwen2 models of the Qwen2.5-1.5B (expert)
and Qwen2.5-0.5B (amateur) shapes, vocabulary 151,936, built on the device from a config (``--smoke``: the tiny
shape). Each part reuses the benchmark script that owns the comparison, and each has a time cap (seconds, GPU
sizes; the caps add up to 600 s, plus ~30 s of start-up):

- ``invariance`` (cap 180 s; ``bench_invariance.py`` in its own process, run first): does a row get the same bits
  alone and in a crowd, op by op and through the decoder and sampling, with native kernels and with the
  fixed-shape path the code takes on CUDA. Figures: shares of identical cases (1 = invariant).
- ``sampling`` (cap 150 s; ``bench_sampling.py``): 64 problems of 80-140 random prompt tokens, 128 new tokens,
  one batch of 64. ``bare``: the expert's greedy generation alone; ``ours``: ``sampling.sample_batch`` with the
  amateur teacher-forced; ``authors``: the authors' per-problem method (batch-1 generation, then the amateur once
  per prefix), timed one problem at a time until 60 s are spent and scaled to the 64 problems. Figures: the three
  times, ``authors / ours`` and ``ours / bare``.
- ``training`` (cap 150 s; ``bench_train.py``, each method in its own process): one epoch of 512 kept steps
  (~100-token prompts, 128 completion tokens, ~10% kept), LoRA r 8, 16 kept steps per update. Figures: seconds per
  epoch and peak memory (``torch.cuda.max_memory_allocated``; on CPU the process's peak RSS) of ``packed`` and
  ``authors``, and their ratios. A method still running at the cap is stopped and the part reports the error.
- ``evaluation`` (cap 120 s): greedy decoding as ``eval`` runs it (``generation.generate_texts``, stop strings) of
  one wave of S fixed synthetic prompts at S = 8, 32, 64, 128, 256 slots, 256 new tokens each. Figures per slot
  count: generated tokens per second (prefill included) and the time per decoding step (wall / longest
  completion). A slot count whose predicted time would pass the cap is skipped (said in ``skipped``).

``--smoke`` runs the same code with the tiny shape and tiny sizes (4 problems, 16 tokens, 32 kept steps, 8 new
tokens) on the CPU (``--smoke --device cuda``: the same on the GPU, a cheap pre-flight); its JSON has the same keys.
``--parts`` runs a subset (e.g. to rerun one part that failed). The JSON (``--out``, written atomically) holds the
device, the versions, each figure as ``{"value", "unit"}``, each part's wall time and status; the script prints a
short table and exits 1 if a part failed (the other parts' figures are still written).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))  # without `pip install -e .`
sys.path.insert(0, str(HERE))  # the benchmark scripts reused here

import torch  # noqa: E402

import bench_sampling  # noqa: E402
import bench_train  # noqa: E402
from lightreasoner import generation, sampling, utils  # noqa: E402
from lightreasoner.models import DTYPES, default_device, dtype_name, resolve_dtype  # noqa: E402
from lightreasoner.testing import byte_tokenizer  # noqa: E402

PARTS = ("invariance", "sampling", "training", "evaluation")
SLOTS = (8, 32, 64, 128, 256)
SIZES = {
    "gpu": dict(expert="1.5b", amateur="0.5b", problems=64, batch=64, sample_tokens=128, authors_cap=60.0,
                kept_steps=512, eval_tokens=256, slots=SLOTS,
                caps=dict(invariance=180.0, sampling=150.0, training=150.0, evaluation=120.0)),
    "smoke": dict(expert="tiny", amateur="tiny", problems=4, batch=4, sample_tokens=16, authors_cap=1.0,
                  kept_steps=32, eval_tokens=8, slots=SLOTS,
                  caps=dict(invariance=300.0, sampling=300.0, training=300.0, evaluation=300.0)),
}


def fig(value: float, unit: str) -> dict:
    return {"value": float(value), "unit": unit}


class Part:
    """One part's figures, context and wall time; an exception inside is recorded, not raised."""

    def __init__(self, name: str, cap: float):
        self.name, self.cap = name, cap
        self.figures: dict[str, dict] = {}
        self.info: dict = {}
        self.status = "ok"

    def left(self) -> float:
        return self.cap - (time.perf_counter() - self.t0)

    def __enter__(self) -> "Part":
        self.t0 = time.perf_counter()
        print(f"[{self.name}] cap {self.cap:.0f} s", flush=True)
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        self.wall = time.perf_counter() - self.t0
        if exc is not None:
            self.status = f"error: {kind.__name__}: {exc}"
            traceback.print_exception(kind, exc, tb)
        print(f"[{self.name}] {self.status}, {self.wall:.1f} s", flush=True)
        return True  # the other parts still run

    def record(self) -> dict:
        return {"status": self.status, "wall": fig(self.wall, "s"), "cap": fig(self.cap, "s"), "info": self.info,
                "figures": self.figures}


def build_pair(size: dict, device: torch.device, dtype: torch.dtype):
    """The random expert and amateur of ``bench_sampling`` (vocabulary 151,936), initialised on the device."""
    spec = SimpleNamespace(expert=None, amateur=None, shape=size["expert"], amateur_shape=size["amateur"])
    with torch.device(device):  # random init where the weights live (seconds on a GPU, not minutes on its host)
        expert, amateur, _, label = bench_sampling.load_pair(spec, device, dtype)
    return expert, amateur, label


def sampling_part(part: Part, size: dict, expert, amateur, device: torch.device) -> None:
    """Bare generation, ours (teacher-forced) and the authors' method on the same problems."""
    eos, pad = [151645], 151643  # bench_sampling's ids for random models
    vocab = min(m.get_output_embeddings().weight.shape[0] for m in (expert, amateur))
    prompts = bench_sampling.make_prompts(None, size["problems"])
    batches = [prompts[i:i + size["batch"]] for i in range(0, len(prompts), size["batch"])]
    T = size["sample_tokens"]
    params = sampling.ScoringParams(max_new_tokens=T, amateur_pass="teacher-forced")
    sampling.sample_batch(expert, amateur, prompts[:2], eos, pad, vocab, sampling.ScoringParams(max_new_tokens=4))
    bare, gens = bench_sampling.timed(lambda: [generation.generate(expert, b, max_new_tokens=T, eos_ids=eos,
                                                                   pad_id=pad) for b in batches], device)
    ours, _ = bench_sampling.timed(lambda: [sampling.sample_batch(expert, amateur, b, eos, pad, vocab, params)
                                            for b in batches], device)
    bench_sampling.authors_method(expert, amateur, prompts[0], eos, pad, vocab, 4, params.alpha)  # warm-up (batch 1)
    spent, k = 0.0, 0
    while k < len(prompts) and (k == 0 or spent < min(size["authors_cap"], part.left())):
        secs, _ = bench_sampling.timed(lambda: bench_sampling.authors_method(expert, amateur, prompts[k], eos, pad,
                                                                             vocab, T, params.alpha), device)
        spent, k = spent + secs, k + 1
    authors = spent * len(prompts) / k
    part.info.update(problems=len(prompts), batch_size=size["batch"], max_new_tokens=T, authors_problems_timed=k,
                     generated_tokens=sum(len(c.ids) for g in gens for c in g), amateur_pass="teacher-forced")
    part.figures.update(bare_s=fig(bare, "s"), ours_s=fig(ours, "s"), authors_s=fig(authors, "s"),
                        authors_over_ours=fig(authors / ours, "x"), ours_over_bare=fig(ours / bare, "x"))


def train_child(method: str, argv: list[str], timeout: float) -> dict:
    """One method of ``bench_train.py`` in its own process (its peak memory is then its own)."""
    cmd = [sys.executable, bench_train.__file__, *argv, "--method", method]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, timeout))
    line = next((x for x in proc.stdout.splitlines()[::-1] if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-1500:]}")
    return json.loads(line[len("RESULT "):])


def invariance_part(part: Part, smoke: bool, device: torch.device, dtype: str) -> None:
    """``bench_invariance.py`` in its own process: each op and the whole decoder, native kernels against the
    fixed-shape path; a figure is the share of cases whose bits equal the row alone."""
    argv = [*(["--smoke"] if smoke else []), "--device", str(device), "--dtype", dtype]
    cmd = [sys.executable, str(HERE / "bench_invariance.py"), *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, part.left()))
    print(proc.stdout[-3000:], end="", flush=True)
    line = next((x for x in proc.stdout.splitlines()[::-1] if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-1500:]}")
    res = json.loads(line[len("RESULT "):])
    part.info.update(models=res["models"], dtype=res["dtype"], tile=res["tile"],
                     command=f"python benchmarks/bench_invariance.py {' '.join(argv)}")
    part.figures.update({k: fig(v, "share identical") for k, v in res["figures"].items()})


def training_part(part: Part, size: dict, device: torch.device, dtype: str) -> None:
    """Packed training against the authors' way, one epoch each (``bench_train.py``'s children)."""
    argv = ["--shape", size["expert"], "--kept-steps", str(size["kept_steps"]), "--device", str(device),
            "--dtype", dtype]
    res = {m: train_child(m, argv, part.left()) for m in ("authors", "packed")}
    a, p = res["authors"], res["packed"]
    part.info.update(model=p["model"], dtype=p["dtype"], kept_steps=p["kept_steps"], updates=p["updates"],
                     trajectories=p["trajectories"], command=f"python benchmarks/bench_train.py {' '.join(argv)}")
    gib = 2 ** 30
    part.figures.update(authors_s_per_epoch=fig(a["seconds"], "s/epoch"),
                        packed_s_per_epoch=fig(p["seconds"], "s/epoch"),
                        speedup=fig(a["seconds"] / p["seconds"], "x"),
                        authors_peak_memory=fig(a["peak_bytes"] / gib, "GiB"),
                        packed_peak_memory=fig(p["peak_bytes"] / gib, "GiB"),
                        memory_ratio=fig(a["peak_bytes"] / p["peak_bytes"], "x"))


def evaluation_part(part: Part, size: dict, model, device: torch.device) -> None:
    """Greedy decoding as ``eval`` runs it, one wave of S prompts at each slot count S; batch invariance on this
    device: the prompts of the first wave decode to the same completions in every wave (``same_as_first_wave``)."""
    tok = byte_tokenizer()
    T = size["eval_tokens"]
    prompts = bench_sampling.make_prompts(None, max(size["slots"]), seed=1)
    generation.generate_texts(model, tok, prompts[:2], max_new_tokens=4, batch_size=2)  # warm-up
    last, skipped, reference = 0.0, [], None
    for s in size["slots"]:
        if last and 2.0 * last > part.left():  # the next wave: at most ~2x the last (a step's cost grows slowly)
            skipped.append(s)
            continue
        secs, outs = bench_sampling.timed(lambda: generation.generate_texts(
            model, tok, prompts[:s], max_new_tokens=T, batch_size=s), device)
        new = sum(o.new_tokens for o in outs)
        steps = max(o.new_tokens for o in outs)
        first = [o.ids for o in outs[:min(size["slots"])]]  # the prompts every wave decodes
        same = first == reference if reference is not None else True
        reference = first if reference is None else reference
        part.figures[f"slots_{s}.same_as_first_wave"] = fig(float(same), "1 = identical completions")
        part.figures[f"slots_{s}.tokens_per_s"] = fig(new / secs, "tokens/s")
        part.figures[f"slots_{s}.step_time"] = fig(1000.0 * secs / steps, "ms")
        part.figures[f"slots_{s}.seconds"] = fig(secs, "s")
        last = secs
    part.info.update(max_new_tokens=T, prompt_tokens="80-140 (random ids, fixed seed)", slots=list(size["slots"]),
                     skipped=skipped, path="generation.generate_texts (greedy, stop strings)")
    if skipped:
        part.status = f"partial: slot counts {skipped} skipped (time cap)"


def free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run(args: argparse.Namespace) -> dict:
    size = SIZES["smoke" if args.smoke else "gpu"]
    device = torch.device(args.device or ("cpu" if args.smoke else default_device()))
    dtype = resolve_dtype(args.dtype, device.type)
    wanted = args.parts.split(",")
    env = utils.environment_info()
    env.update(device=torch.cuda.get_device_name(device) if device.type == "cuda" else env.get("device"),
               device_type=device.type, dtype=dtype_name(dtype),
               cuda=torch.version.cuda if device.type == "cuda" else None)
    out = {"smoke": bool(args.smoke), "command": " ".join(["benchmarks/gpu_check.sh", *sys.argv[1:]]),
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": env,
           "sizes": {k: v for k, v in size.items() if k != "caps"}, "parts": {}}
    t0 = time.perf_counter()
    parts = {n: Part(n, size["caps"][n]) for n in PARTS if n in wanted}
    pair: list = []

    def models() -> list:  # built once, inside the first part that needs them (a failure is that part's)
        if not pair:
            t1 = time.perf_counter()
            *two, out["models"] = build_pair(size, device, dtype)
            pair.extend(two)
            out["build_wall"] = fig(time.perf_counter() - t1, "s")
        return pair

    if "invariance" in parts:  # first: a child process, with the device to itself
        with parts["invariance"] as p:
            invariance_part(p, bool(args.smoke), device, args.dtype)
    for name, fn in (("sampling", lambda p: sampling_part(p, size, *models(), device)),
                     ("evaluation", lambda p: evaluation_part(p, size, models()[0], device))):
        if name in parts:
            with parts[name] as p:
                fn(p)
    pair.clear()
    free(device)
    if "training" in parts:
        with parts["training"] as p:
            training_part(p, size, device, args.dtype)
    out["parts"] = {n: p.record() for n, p in parts.items()}
    out["total_wall"] = fig(time.perf_counter() - t0, "s")
    return out


def table(out: dict) -> str:
    lines = [f"{out['environment'].get('device')}  torch {out['environment'].get('torch')}  transformers "
             f"{out['environment'].get('transformers')}  {out['environment']['dtype']}  total "
             f"{out['total_wall']['value']:.0f} s"]
    for name, part in out["parts"].items():
        lines.append(f"{name} ({part['wall']['value']:.0f} s, {part['status']})")
        lines += [f"  {k:28s} {v['value']:12.3f} {v['unit']}" for k, v in part["figures"].items()]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_check.json", help="the JSON of figures (default: ./gpu_check.json)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes and sizes on the CPU (the same code path)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    ap.add_argument("--device", default=None, help="default: cuda when present (cpu with --smoke)")
    ap.add_argument("--dtype", default="auto", choices=DTYPES)
    args = ap.parse_args(argv)
    bad = [p for p in args.parts.split(",") if p not in PARTS]
    if bad:
        raise utils.InputError(f"--parts {args.parts!r}: {', '.join(bad)} unknown; choose from {', '.join(PARTS)}")
    if not args.smoke and args.device is None and default_device() != "cuda":
        raise utils.InputError("no CUDA device found: the full sizes are for one H100/H200; run with --smoke (tiny "
                               "shapes on the CPU), or name a device with --device to run the full sizes there")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except utils.InputError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    out = run(args)
    utils.write_json(args.out, out)
    print(table(out))
    ok = all(p["status"] == "ok" or p["status"].startswith("partial") for p in out["parts"].values())
    nonfinite = [f"{n}.{k}" for n, p in out["parts"].items() for k, v in p["figures"].items()
                 if not math.isfinite(v["value"])]
    if nonfinite:
        print(f"not finite: {', '.join(nonfinite)}", file=sys.stderr)
    return 0 if ok and not nonfinite else 1


if __name__ == "__main__":
    raise SystemExit(main())
