"""Evaluation throughput, side by side in one run: an older commit's decoding against this checkout's.

Each arm evaluates the same first ``--limit`` GSM8K test problems (shipped data, the chat prompt the default run
uses, greedy, ``--max-new-tokens``) through ``lightreasoner.evaluation.evaluate_model`` -- the real eval path,
grading included -- in its own process, one arm at a time, and records the time breakdown: prefill (the
decoder's admissions), decode (its steps), grading, and the rest (Python per step, stop strings, bookkeeping),
generated tokens per second of wall time, the accuracy, and every completion. Arms whose problems overlap are
compared completion by completion (identical text and token count).

    python benchmarks/bench_throughput.py --old d62b79b --arms old:64,new:64,new:8@64 \\
        --limit 256 --max-new-tokens 512 --out benchmarks/throughput.json

An arm is ``CODE:SLOTS[@LIMIT]``: ``old`` runs the ``--old`` commit (checked out into a git worktree under /tmp),
``new`` this checkout; ``@LIMIT`` evaluates only the first LIMIT problems.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    """One arm, in this process: evaluate and print one JSON line of figures."""
    import torch

    from lightreasoner import decoder, evaluation
    from lightreasoner.benchmarks import load_benchmark
    from lightreasoner.models import load_model

    spent = {"prefill": 0.0, "decode": 0.0, "grading": 0.0}
    counts = {"steps": 0, "admissions": 0}
    depth = [0]

    def timed(fn, key, count=None):
        def wrapper(*a, **k):
            if depth[0]:
                return fn(*a, **k)
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t0
                depth[0] -= 1
                if count:
                    counts[count] += 1
        return wrapper

    cls = decoder.CachedDecoder
    cls.prefill = timed(cls.prefill, "prefill", "admissions")
    cls.admit = timed(cls.admit, "prefill", "admissions")
    cls.step = timed(cls.step, "decode", "steps")
    evaluation.grade_many = timed(evaluation.grade_many, "grading")
    t0 = time.perf_counter()
    lm = load_model(args.model)
    load_s = time.perf_counter() - t0
    examples = load_benchmark("gsm8k", None, limit=args.limit)
    params = evaluation.EvalParams(prompt="chat", max_new_tokens=args.max_new_tokens, batch_size=args.slots)
    t0 = time.perf_counter()
    res = evaluation.evaluate_model(lm.model, lm.tokenizer, "gsm8k", examples, params, None, progress=False)
    wall = time.perf_counter() - t0
    recs = res["records"]
    gen = sum(r["new_tokens"] for r in recs)
    out = {"wall_s": round(wall, 2), **{f"{k}_s": round(v, 2) for k, v in spent.items()},
           "other_s": round(wall - sum(spent.values()), 2), "generated_tokens": gen,
           "generated_tokens_per_s": round(gen / wall, 2), **counts,
           "decode_ms_per_step": round(1000 * spent["decode"] / max(1, counts["steps"]), 1),
           "accuracy": res["accuracy"], "n": len(recs), "load_s": round(load_s, 1),
           "threads": torch.get_num_threads(),
           "completions": {r["id"]: [r["completion"], r["new_tokens"]] for r in recs}}
    print("RESULT " + json.dumps(out))


def old_source(rev: str) -> Path:
    """A git worktree of ``rev`` under /tmp (made once), its ``src`` folder."""
    where = Path(f"/tmp/lr-bench-{rev}")
    if not where.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev], check=True,
                       capture_output=True)
    return where / "src"


def run_arm(spec: str, args: argparse.Namespace) -> dict:
    code, rest = spec.split(":")
    slots, _, limit = rest.partition("@")
    src = old_source(args.old) if code == "old" else ROOT / "src"
    cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--slots", slots,
           "--limit", limit or str(args.limit), "--max-new-tokens", str(args.max_new_tokens)]
    env = {**os.environ, "PYTHONPATH": str(src)}
    print(f"arm {spec}: {src}", flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise SystemExit(f"arm {spec} failed:\n{proc.stderr[-3000:]}")
    return {"arm": spec, "code": code, "slots": int(slots), **json.loads(line[len("RESULT "):])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    p.add_argument("--old", default="d62b79b", help="the commit whose decoding is today's path")
    p.add_argument("--arms", default="old:64,new:64,new:8@64")
    p.add_argument("--limit", type=int, default=256)
    p.add_argument("--slots", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--out", default=None, help="write every arm's figures (and completions) here as JSON")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    results = []
    for spec in args.arms.split(","):
        results.append(run_arm(spec, args))
        r = results[-1]
        print(f"  {r['n']} problems, {r['generated_tokens']} tokens in {r['wall_s']} s: "
              f"{r['generated_tokens_per_s']} tok/s; prefill {r['prefill_s']} s, decode {r['decode_s']} s "
              f"({r['decode_ms_per_step']} ms/step), grading {r['grading_s']} s, other {r['other_s']} s; "
              f"accuracy {r['accuracy']}", flush=True)
    pairs = []
    for i, a in enumerate(results):
        for b in results[i + 1:]:
            common = sorted(set(a["completions"]) & set(b["completions"]))
            same = sum(a["completions"][k] == b["completions"][k] for k in common)
            pairs.append({"arms": [a["arm"], b["arm"]], "common": len(common), "identical": same})
            print(f"{a['arm']} vs {b['arm']}: {same} of {len(common)} completions identical")
    base = results[0]["generated_tokens_per_s"]
    for r in results[1:]:
        print(f"{r['arm']} / {results[0]['arm']}: {r['generated_tokens_per_s'] / base:.2f}x generated tokens/s")
    if args.out:
        Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "arms": results, "pairs": pairs,
                                              "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))


if __name__ == "__main__":
    main()
