"""The restructuring of issue 13 changes no number: the same tiny run, old code vs new code, side by side.

Runs `lightreasoner run` on the tiny random pair of ``lightreasoner.testing`` (saved to a scratch folder), with a
small GSM8K-style problems file and evaluation set, once with the code of ``--old`` (a git commit, checked out in
a temporary worktree; its flags are the flat ones of that time) and once with this checkout, the same settings
spelled the new way. Compares, record by record: the sampling records (every field: token ids, per-step KL and
entropies, kept steps and their soft labels), the training losses (``metrics.jsonl``: every logged update's loss
and gradient norm), and the evaluation records of the base and the tuned expert (completion, prediction, gold,
verdict), the training summary (first and final loss, tokens), and the trained adapter's and the merged model's
tensors, byte for byte. Prints a table and writes ``--out`` (JSON).

    python benchmarks/refactor_equivalence.py --old 58da1dc --out benchmarks/refactor_equivalence.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = dict(max_problems=4, max_new_tokens=8, sample_batch=2, beta=0.5, steps_per_update=4, max_steps=3,
                save_every=2, lr="1e-3", eval_limit=3, eval_tokens=8, eval_batch=3)


def old_args(models: Path, data: Path, bench: Path, out: Path) -> list[str]:
    s = SETTINGS
    return ["run", "--expert", str(models / "expert"), "--amateur", str(models / "amateur"), "--data", str(data),
            "--eval-data-dir", str(bench), "--output", str(out), "--max-problems", str(s["max_problems"]),
            "--max-new-tokens", str(s["max_new_tokens"]), "--sample-batch-size", str(s["sample_batch"]),
            "--beta", str(s["beta"]), "--steps-per-update", str(s["steps_per_update"]),
            "--max-steps", str(s["max_steps"]), "--save-every", str(s["save_every"]), "--lr", s["lr"],
            "--lr-scheduler", "constant", "--eval-limit", str(s["eval_limit"]),
            "--eval-max-new-tokens", str(s["eval_tokens"]), "--eval-batch-size", str(s["eval_batch"]),
            "--eval-prompt", "chat", "--perplexity-problems", "0", "--dtype", "float32", "--device", "cpu"]


def new_args(models: Path, data: Path, bench: Path, out: Path) -> list[str]:
    s = SETTINGS
    return ["run", "--config", "none", "--expert", str(models / "expert"), "--amateur", str(models / "amateur"),
            "--data", str(data), "--eval.data-dir", str(bench), "--output", str(out),
            "--sample.max-problems", str(s["max_problems"]), "--sample.max-new-tokens", str(s["max_new_tokens"]),
            "--sample.batch-size", str(s["sample_batch"]), "--sample.beta", str(s["beta"]),
            "--train.steps-per-update", str(s["steps_per_update"]), "--train.max-steps", str(s["max_steps"]),
            "--train.save-every", str(s["save_every"]), "--train.lr", s["lr"], "--train.lr-scheduler", "constant",
            "--eval.benchmarks", "gsm8k", "--eval.limit", str(s["eval_limit"]),
            "--eval.max-new-tokens", str(s["eval_tokens"]), "--eval.batch-size", str(s["eval_batch"]),
            "--eval.prompt", "chat", "--perplexity-problems", "0", "--dtype", "float32", "--device", "cpu",
            "--seed", "42"]


# Where each output lives, (old layout, new layout).
PATHS = {"samples": ("samples.jsonl", "sample/samples.jsonl"), "metrics": ("adapter/metrics.jsonl",
                                                                             "train/metrics.jsonl"),
         "train_summary": ("adapter/summary.json", "train/summary.json"),
         "adapter_weights": ("adapter/adapter_model.safetensors", "train/adapter_model.safetensors"),
         "merged_weights": ("merged/model.safetensors", "merge/model.safetensors"),
         "eval_base": ("eval/base/gsm8k.jsonl", "eval/base/gsm8k.jsonl"),
         "eval_tuned": ("eval/tuned/gsm8k.jsonl", "eval/tuned/gsm8k.jsonl")}
COMPARED = {"samples": None,  # every field
            "metrics": ("update", "loss", "grad_norm", "lr", "kept_steps_seen"),
            "train_summary": ("updates", "tuned_tokens", "forward_tokens", "first_loss", "final_loss", "epochs"),
            "adapter_weights": "tensors", "merged_weights": "tensors",
            "eval_base": ("id", "prompt", "completion", "pred", "gold", "correct", "new_tokens", "finish_reason"),
            "eval_tuned": ("id", "prompt", "completion", "pred", "gold", "correct", "new_tokens", "finish_reason")}


def read(path: Path, fields: tuple[str, ...] | str | None) -> list:
    """The compared content: JSONL rows (all fields or some), a JSON file's fields, or every tensor's bytes."""
    if fields == "tensors":
        from safetensors.torch import load_file

        return [(k, v.dtype, tuple(v.shape), v.numpy().tobytes()) for k, v in sorted(load_file(path).items())]
    if path.suffix == ".json":
        return [{k: json.loads(path.read_text()).get(k) for k in fields}]  # type: ignore[union-attr]
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows if fields is None else [{k: r.get(k) for k in fields} for r in rows]


def make_inputs(tmp: Path, src: Path) -> tuple[Path, Path, Path]:
    """Tiny models, a problems file and an evaluation folder, made by this checkout's testing helpers."""
    code = f"""
import json, sys
sys.path.insert(0, {str(src)!r})
from pathlib import Path
from lightreasoner.testing import byte_tokenizer, gsm8k_style_rows, tiny_causal_lm
root = Path({str(tmp)!r})
tok = byte_tokenizer()
for name, seed in (("expert", 1), ("amateur", 2)):
    tiny_causal_lm(seed=seed).save_pretrained(root / "models" / name)
    tok.save_pretrained(root / "models" / name)
rows = gsm8k_style_rows()
(root / "problems.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in rows))
(root / "bench" / "gsm8k").mkdir(parents=True)
(root / "bench" / "gsm8k" / "test.jsonl").write_text("".join(json.dumps({{"idx": i, **r}}) + "\\n"
                                                     for i, r in enumerate(rows)))
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    return tmp / "models", tmp / "problems.jsonl", tmp / "bench"


def run(src: Path, args: list[str], cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-m", "lightreasoner", *args], cwd=cwd, env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(args[:1])} failed with {src}:\n{proc.stderr[-3000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", default="58da1dc", help="git commit of the code before the restructuring")
    ap.add_argument("--out", default=None, help="JSON file for the comparison")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        old_tree = tmp / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old_tree), a.old], check=True,
                       capture_output=True)
        try:
            models, data, bench = make_inputs(tmp, ROOT / "src")
            run(old_tree / "src", old_args(models, data, bench, tmp / "run_old"), tmp)
            run(ROOT / "src", new_args(models, data, bench, tmp / "run_new"), tmp)
            result = {"old": a.old, "new": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                                          capture_output=True, text=True).stdout.strip(),
                      "settings": SETTINGS, "compared": {}}
            for name, (old_path, new_path) in PATHS.items():
                x = read(tmp / "run_old" / old_path, COMPARED[name])
                y = read(tmp / "run_new" / new_path, COMPARED[name])
                result["compared"][name] = {"records": len(x), "identical": x == y,
                                            "differing": sum(p != q for p, q in zip(x, y)) + abs(len(x) - len(y))}
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_tree)],
                           capture_output=True)
    print(f"old {result['old']} vs new {result['new']}")
    print(f"{'output':12s} {'records':>8s} {'identical':>10s}")
    for name, r in result["compared"].items():
        print(f"{name:12s} {r['records']:8d} {str(r['identical']):>10s}")
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(r["identical"] for r in result["compared"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
