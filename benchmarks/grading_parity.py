"""Verdict parity between our grader (``lightreasoner.grading``) and the real Qwen2.5-Math evaluation toolkit.

What it measures
----------------
For a deterministic corpus of (benchmark row, completion) pairs over the seven benchmarks of the paper
(gsm8k, math, svamp, asdiv, minerva_math, olympiadbench, mmlu_stem; rows from /work/shared/data/bench/<name>/test.jsonl)
it computes

* the toolkit's verdict, exactly as its pipeline does for prompt type ``qwen25-math-cot``: the post-generation cut
  (strip, stop strings) of ``math_eval.py``; ``parse_ground_truth`` on the raw row (first-pass gold);
  ``run_execute`` = ``strip_string(extract_answer(completion))``; the multiple-choice repair of ``math_eval.py``'s
  main loop (which looks at the first-pass gold); then ``evaluate.py``: ``parse_ground_truth`` again on the stored
  (gt_cot, gt) (second pass) and ``math_equal(pred, gold)`` in a pebble ``ProcessPool(max_workers=1)`` with
  ``map(..., timeout=3)`` (a timeout counts as wrong). This side runs in a separate interpreter (``--python``) that
  imports the toolkit's own ``parser.py``/``grader.py`` and its bundled ``latex2sympy2`` (this script never copies
  toolkit code; it only imports it in that subprocess);
* our verdict: ``lightreasoner.grading.grade_many(benchmark, rows, completions)`` in this interpreter;

and reports, per benchmark, n / agreements / disagreements (with examples: completion tail, both preds, both golds,
both verdicts), how often the extracted prediction or the gold string differs even where the verdicts agree,
timeouts, overall agreement and wall time of each side. Results go to ``--out`` under ``runs[--label]``
(replacing that label's entry, keeping the others) so "before" and "after" a grader change sit side by side.
Each entry also keeps every pair's verdict (``verdicts``: one character per pair in pid order, both sides), the pids
where the two sides disagree (``disagreeing_pids``), and, for every other label in the file measured on the same
corpus with verdicts kept, the pairs whose verdict (ours) changed (``ours_verdict_changes``).

Which grader was measured (``ours``): ``lightreasoner.grading`` as imported, either the package
``<checkout>/src/lightreasoner/grading/`` (hash over every file in it, ``__pycache__`` excluded, sorted by path,
names and bytes) or the old single module ``<checkout>/src/lightreasoner/grading.py`` (hash of its bytes); the
checkout root, its HEAD, whether the grader or ``grading_data.py`` differ from that HEAD (untracked files included)
and whether they changed on disk during the run. Entries written before the package split name these fields
``grading_py``, ``grading_py_differs_from_checkout_head`` and ``grading_py_changed_during_run``.

The corpus (regenerated each run from ``--seed``; written to ``--corpus``, by default in /tmp; its sha256 is
recorded so two labels can be checked to have used the same pairs):

* every real model completion under benchmarks/runs (``**/gsm8k.jsonl`` and ``**/eval/**/<benchmark>.jsonl``; rows
  carry ``id`` = the example's ``idx`` and ``completion``), de-duplicated;
* for each benchmark up to ``--rows`` sampled rows, each with ``--variants`` synthetic completions: the row's gold in
  several written forms (raw, spaced, ``The answer is``, Minerva's "final answer is $..$. I hope", ``$``, units /
  ``\\text{}``, decimals vs fractions, ``\\dfrac``, commas, percent, words, near misses, 100x), another row's gold,
  forms derived with sympy (expanded / factored / python syntax / numeric approximation), multiple-choice phrasings
  for mmlu_stem, truncated and doubled boxes, stop strings, empty completions;
* a fixed hand-written list of algebraic pairs (factorisations, radicals, intervals, tuples, sets, matrices,
  equations, python-syntax answers, slow expressions) graded as ``math`` and ``minerva_math`` rows.

Getting the toolkit (snapshot a45202b; the data folder is not needed and its large files are absent from the mirror)::

    # fetch tool: github:QwenLM/Qwen2.5-Math  ->  /work/.mirror/QwenLM+Qwen2.5-Math/repo
    mkdir -p /tmp/qwen_toolkit
    git --git-dir=/work/.mirror/QwenLM+Qwen2.5-Math/repo archive a45202b evaluation ':(exclude)evaluation/data' \\
        | tar -x -C /tmp/qwen_toolkit
    python -m venv /tmp/toolkit_venv
    /tmp/toolkit_venv/bin/pip install sympy==1.12 mpmath==1.3.0 antlr4-python3-runtime==4.11.1 regex word2number \\
        pebble numpy

Run (this interpreter must import ``lightreasoner``; prefix ``PYTHONPATH=<checkout>/src`` to grade another copy)::

    python benchmarks/grading_parity.py --toolkit /tmp/qwen_toolkit/evaluation \\
        --python /tmp/toolkit_venv/bin/python --out benchmarks/grading_parity.json --label before

The recorded "before" graded commit 58da1dc's grader (single module) from a clean worktree (the checkout was being
edited); "after" graded the package from a clean worktree of the commit named in its ``ours.checkout_head``::

    git -C /work/main worktree add /tmp/grading_before 58da1dc
    PYTHONPATH=/tmp/grading_before/src python benchmarks/grading_parity.py ... --label before
    git -C /work/main worktree add /tmp/grading_after <commit>
    PYTHONPATH=/tmp/grading_after/src python benchmarks/grading_parity.py ... --label after

The corpus is built from this script's checkout (benchmarks/runs), whichever grader is imported.

About 5-6 minutes on 2 cores for ~8000 pairs (toolkit ~3 min, ours ~2 min, one process per side, in turn).
"before_recheck" is 58da1dc's grader measured again with this version of the script (same corpus), for its
per-pair verdicts (the original "before" entry predates them) and for timings taken alongside "after".

Not reproduced: the toolkit's tool-call continuation (a completion without ``boxed`` that ends in three backticks
would be sent back to the model); such pairs are counted (``tool_call_branch``) but graded as final.
"""

from __future__ import annotations

import argparse
import copy
import glob
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = Path("/work/shared/data/bench")
BENCHMARKS = ("gsm8k", "math", "svamp", "asdiv", "minerva_math", "olympiadbench", "mmlu_stem")
STOP_WORDS = ("</s>", "<|im_end|>", "<|endoftext|>")
PROMPT_TYPE = "qwen25-math-cot"
TOOLKIT_TIMEOUT = 3  # evaluate.py: pool.map(math_equal_process, params, timeout=3)
MAX_EXAMPLES = 5


# ------------------------------------------------------------------------------------------------------------------
# Toolkit side (runs under --python, imports only the stdlib and the toolkit)
# ------------------------------------------------------------------------------------------------------------------

def toolkit_worker(toolkit: str, corpus_path: str, out_path: str) -> None:
    toolkit = os.path.abspath(toolkit)
    corpus_path, out_path = os.path.abspath(corpus_path), os.path.abspath(out_path)
    sys.path[:0] = [toolkit, os.path.join(toolkit, "latex2sympy")]
    os.chdir(toolkit)
    import parser as tk_parser  # the toolkit's parser.py (shadows nothing: the stdlib has no `parser` since 3.10)
    import grader as tk_grader
    from pebble import ProcessPool
    from concurrent.futures import TimeoutError as FutureTimeout

    assert hasattr(tk_parser, "extract_answer"), f"{tk_parser.__file__} is not the toolkit's parser.py"
    letters = ["A", "B", "C", "D", "E"]

    def is_multi_choice(answer):  # math_eval.is_multi_choice (math_eval.py imports vllm, so it is not imported)
        for c in answer:
            if c not in letters:
                return False
        return True

    pairs = [json.loads(line) for line in open(corpus_path)]
    records, params, param_rec = [], [], []
    t0 = time.time()
    for p in pairs:
        bench = p["bench"]
        example = copy.deepcopy(p["example"])
        example["idx"] = p["pid"]
        rec = {"pid": p["pid"], "status": "ok"}
        records.append(rec)
        try:
            # math_eval.main: question (empty -> skipped), first-pass gold
            question = tk_parser.parse_question(example, bench)
            if question == "":
                rec["status"] = "skipped"
                continue
            gt_cot, gt_ans = tk_parser.parse_ground_truth(example, bench)
            # post-generation: output.rstrip(), prompt removed, .strip(), cut at stop words
            code = p["completion"].rstrip().strip()
            for stop in STOP_WORDS:
                if stop in code:
                    code = code.split(stop)[0].strip()
            rec["tool_call_branch"] = "boxed" not in code and code.endswith("```")
            pred, _report = tk_parser.run_execute(None, code, PROMPT_TYPE, bench)
            rec["pred_extracted"] = pred
            if gt_ans in letters and pred not in letters:
                pred = tk_parser.choice_answer_clean(code)
            elif is_multi_choice(gt_ans) and not is_multi_choice(pred):
                pred = "".join([c for c in pred if c in letters])
            # evaluate.evaluate: second pass on the stored sample
            sample = {"idx": p["pid"], "gt_cot": gt_cot, "gt": gt_ans, "pred": [pred]}
            sample["gt_cot"], sample["gt"] = tk_parser.parse_ground_truth(sample, bench)
            rec.update(pred=pred, gold=sample["gt"], first_gold=gt_ans)
            params.append((p["pid"], pred, sample["gt"]))
            param_rec.append(rec)
        except Exception as e:  # the toolkit would crash on this pair
            rec["status"] = "crash"
            rec["error"] = f"{type(e).__name__}: {e}"
    t_prepare = time.time() - t0

    t0 = time.time()
    timeouts = 0
    with ProcessPool(max_workers=1) as pool:
        future = pool.map(tk_grader.math_equal_process, params, timeout=TOOLKIT_TIMEOUT)
        iterator = future.result()
        for rec in param_rec:
            try:
                rec["correct"] = bool(next(iterator))
            except StopIteration:  # pragma: no cover - one result per param
                raise RuntimeError("pebble map ended early")
            except FutureTimeout:
                rec["correct"] = False
                rec["status"] = "timeout"
                timeouts += 1
            except Exception as e:  # evaluate.py would print the traceback and exit()
                rec["correct"] = False
                rec["status"] = "error"
                rec["error"] = f"{type(e).__name__}: {e}"
    t_equal = time.time() - t0
    with open(out_path, "w") as f:
        json.dump({"records": records, "seconds_prepare": t_prepare, "seconds_math_equal": t_equal,
                   "timeouts": timeouts}, f)


# ------------------------------------------------------------------------------------------------------------------
# Corpus
# ------------------------------------------------------------------------------------------------------------------

def load_rows(bench: str) -> list[dict]:
    with open(BENCH_DIR / bench / "test.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def last_boxed(text: str) -> str | None:
    i = text.rfind("\\boxed")
    if i < 0:
        return None
    j = text.find("{", i)
    if j < 0:
        return None
    depth = 0
    for k in range(j, len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return text[j + 1:k]
    return None


def raw_gold(bench: str, row: dict) -> str:
    """The gold as a person would write it (harness-side, only to build completions)."""
    if bench == "gsm8k":
        return row["answer"].split("####")[-1].strip()
    if bench == "svamp":
        return fmt_num(float(row["Answer"]))
    if bench == "asdiv":
        return re.sub(r"\(.*?\)", "", str(row["answer"])).strip()
    if bench in ("math", "minerva_math"):
        return (last_boxed(row["solution"]) or "").strip()
    if bench == "olympiadbench":
        return str(row["final_answer"][0]).strip().strip("$").strip()
    if bench == "mmlu_stem":
        return "ABCD"[row["answer"]]
    raise ValueError(bench)


def fmt_num(x: float) -> str:
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.10g}"


def num_value(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
        "seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def in_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    rest = n % 100
    return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + in_words(rest))


FRAC_RE = re.compile(r"^(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}$")
SLASH_RE = re.compile(r"^(-?)(\d+)/(\d+)$")

T_BOX = "Let's solve it step by step.\nAfter simplifying, we obtain the result.\nTherefore, the final answer is $\\boxed{%s}$."
T_BOX_PLAIN = "We compute carefully and get \\boxed{%s}"
T_ANS = "We work through the problem carefully.\nThe answer is %s."
T_ANS_DOLLAR = "We work through the problem carefully.\nThe answer is $%s$."
T_MINERVA = "Solution: we compute it directly.\nFinal Answer: The final answer is $%s$. I hope it is correct."


def spaced(g: str) -> str:
    return re.sub(r"\s*([=+*/,<>]|(?<![\\{(^])-)\s*", r" \1 ", g).strip()


def fraction_of(g: str):
    m = FRAC_RE.match(g.replace(" ", "")) or SLASH_RE.match(g.replace(" ", ""))
    if m and int(m.group(3)) != 0:
        return (-1 if m.group(1) else 1), int(m.group(2)), int(m.group(3))
    return None


class _Alarm(Exception):
    pass


def sympy_forms(g: str) -> list[tuple[str, str]]:
    """Equivalent (and a few inequivalent) forms of a symbolic gold, derived with sympy (harness-side)."""
    if not g or len(g) > 40 or any(t in g for t in ("\\text", "\\begin", ",", "=", "\\le", "\\ge", "\\in", "<", ">",
                                                     "\\cup", "\\mbox", "\\pm", "\\circ", "\\%", "\\infty")):
        return []
    import signal

    def on_alarm(*_):
        raise _Alarm()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(2)
    out: list[tuple[str, str]] = []
    try:
        import sympy
        from latex2sympy2_extended import latex2sympy
        e = latex2sympy(g)
        if not isinstance(e, sympy.Expr) or e.is_Number and e.is_Rational:
            return []
        if e.free_symbols:
            for tag, f in (("sym_expand", sympy.expand), ("sym_factor", sympy.factor)):
                try:
                    s = sympy.latex(f(e))
                    out.append((tag, s))
                except Exception:
                    pass
            out.append(("sym_python", str(e)))
            out.append(("sym_plus1_wrong", sympy.latex(e + 1)))
        else:
            out.append(("sym_latex", sympy.latex(e)))
            out.append(("sym_python", str(e)))
            v = float(sympy.N(e))
            out.append(("sym_float6", f"{v:.6g}"))
            out.append(("sym_float2", f"{v:.2f}"))
    except (_Alarm, Exception):
        pass
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    seen, uniq = {g.replace(" ", "")}, []
    for tag, s in out:
        if s.replace(" ", "") not in seen and len(s) < 120:
            seen.add(s.replace(" ", ""))
            uniq.append((tag, s))
    return uniq


def variants(bench: str, row: dict, other: str, rng: random.Random) -> tuple[list, list]:
    """(forced, optional) lists of (tag, completion)."""
    g = raw_gold(bench, row)
    if bench == "mmlu_stem":
        L = g
        text = str(row["choices"]["ABCD".index(L)]).strip()
        wrong = rng.choice([c for c in "ABCD" if c != L])
        opt = [
            ("mc_box", T_BOX_PLAIN % L),
            ("mc_answer_paren", f"Considering each option in turn.\nThe answer is ({L})."),
            ("mc_answer_text", f"Considering each option in turn.\nThe answer is {L}: {text}"),
            ("mc_box_text", f"Considering each option in turn.\nTherefore \\boxed{{{text}}}"),
            ("mc_box_lower", T_BOX_PLAIN % L.lower()),
            ("mc_box_then_prose", f"So the result is \\boxed{{{L}}}, which is a consequence of the law."),
            ("mc_two_answer_is", f"The answer is ({wrong}).\n\nOn reflection, the answer is ({L})."),
            ("mc_paren_only", f"Checking the options, the right one is ({L}) {text}."),
            ("mc_no_answer", "Let us think about the options. None of them is obviously wrong."),
            ("mc_empty", ""),
        ]
        return [("mc_wrong_letter", T_BOX_PLAIN % wrong)], opt
    forced = [("other_gold", T_BOX % other)]
    opt = [
        ("box_raw", T_BOX % g),
        ("box_spaced", T_BOX % spaced(g)),
        ("box_plain", T_BOX_PLAIN % g),
        ("answer_is", T_ANS % g),
        ("answer_is_dollar", T_ANS_DOLLAR % g),
        ("minerva_style", T_MINERVA % g),
        ("box_text_unit", T_BOX % (g + " \\text{ units}")),
        ("box_text_cm", T_BOX % (g + "\\text{cm}")),
        ("box_mbox", T_BOX % (g + " \\mbox{ inches}")),
        ("box_dollar", T_BOX % ("\\$" + g)),
        ("box_inline_math", T_BOX % ("\\(" + g + "\\)")),
        ("box_unclosed", "We get the value \\boxed{" + g),
        ("box_twice_last_wrong", f"First guess \\boxed{{{g}}}, but recheck: \\boxed{{{other}}}"),
        ("box_twice_last_right", f"First guess \\boxed{{{other}}}, but recheck: \\boxed{{{g}}}"),
        ("stop_string", T_BOX % g + "<|im_end|>\nMore text \\boxed{12345}"),
        ("no_box_numbers", "We have 3 + 4 = 7 and then 7 * 2 = 14, so 1,234 items remain."),
        ("empty", ""),
    ]
    if g.isalpha():
        opt.append(("box_case", T_BOX % g.swapcase()))
    if bench == "asdiv":
        opt.append(("asdiv_raw_answer", T_BOX % str(row["answer"])))
        opt.append(("asdiv_units_words", T_ANS % str(row["answer"])))
    v = num_value(g)
    if v is not None:
        if v == int(v):
            n = int(v)
            opt += [("num_dec_zeros", T_BOX % f"{g}.00"), ("num_words", T_BOX % in_words(abs(n)))
                    if 0 <= n < 1000 else ("num_neg", T_BOX % fmt_num(-v))]
            if abs(n) >= 1000:
                opt.append(("num_commas", T_BOX % f"{n:,}"))
            opt.append(("num_dollars_text", T_ANS % f"{g} dollars"))
            opt.append(("num_apples", T_BOX % f"{g} apples"))
        else:
            fr = Fraction(v).limit_denominator(1000)
            opt.append(("num_as_frac", T_BOX % f"\\frac{{{fr.numerator}}}{{{fr.denominator}}}"))
        opt += [("num_percent", T_BOX % f"{g}\\%"), ("num_x100", T_BOX % fmt_num(v * 100)),
                ("num_plus1", T_BOX % fmt_num(v + 1)), ("num_near_in", T_BOX % f"{v * (1 + 3e-5):.9g}"),
                ("num_near_out", T_BOX % f"{v * (1 + 3e-3):.9g}"), ("num_sci", T_BOX % f"{v:.4e}"),
                ("num_latex_sci", T_BOX % (f"{v / 10:g} \\times 10^{{1}}"))]
    fr = fraction_of(g)
    if fr:
        s, a, b = fr
        sign = "-" if s < 0 else ""
        x = s * a / b
        opt += [("frac_dec4", T_BOX % f"{x:.4f}"), ("frac_dec2", T_BOX % f"{x:.2f}"),
                ("frac_slash", T_BOX % f"{sign}{a}/{b}"), ("frac_frac", T_BOX % f"{sign}\\frac{{{a}}}{{{b}}}"),
                ("frac_dfrac", T_BOX % f"{sign}\\dfrac{{{a}}}{{{b}}}"),
                ("frac_unreduced", T_BOX % f"{sign}\\frac{{{2 * a}}}{{{2 * b}}}"),
                ("frac_repr", T_BOX % repr(x))]
        if a < 10 and b < 10:
            opt.append(("frac_short", T_BOX % f"{sign}\\frac{a}{b}"))
    if bench in ("math", "minerva_math", "olympiadbench") and v is None and not fr:
        sym = sympy_forms(g)
        if sym:
            forced.append(rng.choice(sym))
            opt += [(tag, T_BOX % s) for tag, s in sym]
    return forced, opt


# (pred, gold): graded as math and as minerva_math rows whose solution boxes the gold
HANDCRAFTED = [
    ("x^2-1", "(x-1)(x+1)"), ("(x+1)(x-1)", "x^2-1"), ("x^2+1", "(x-1)(x+1)"),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"), ("\\sqrt{2}/2", "\\frac{1}{\\sqrt{2}}"),
    ("\\frac{\\sqrt3}{3}", "\\frac{1}{\\sqrt{3}}"), ("1/\\sqrt{3}", "\\frac{\\sqrt{3}}{3}"),
    ("2\\sqrt{2}", "\\sqrt{8}"), ("\\sqrt{12}", "2\\sqrt{3}"), ("3\\sqrt{2}", "\\sqrt{8}"),
    ("sqrt(2)/2", "\\frac{\\sqrt{2}}{2}"), ("x**2 - 1", "x^2-1"), ("2*x + 1", "2x+1"), ("pi/2", "\\frac{\\pi}{2}"),
    ("\\pi/2", "\\frac{\\pi}{2}"), ("90^\\circ", "\\frac{\\pi}{2}"), ("\\frac{\\pi}{3}", "60"),
    ("0.7071", "\\frac{\\sqrt{2}}{2}"), ("0.71", "\\frac{\\sqrt{2}}{2}"), ("1.4142", "\\sqrt{2}"),
    ("3.14159", "\\pi"), ("e^{i\\pi}", "-1"), ("\\log_2 8", "3"), ("\\ln(e^2)", "2"), ("log(8)/log(2)", "3"),
    ("\\sin^2 x + \\cos^2 x", "1"), ("\\sec^2 y", "\\tan^2 y + 1"), ("\\frac{x}{7}+\\frac{2}{7}", "\\frac{x+2}{7}"),
    ("\\frac{x+2}{7}", "\\frac{x+3}{7}"), ("2^{10}", "1024"), ("10!", "3628800"), ("\\binom{5}{2}", "10"),
    ("y=2x+1", "2x+1"), ("2x+1", "y=2x+1"), ("y=2x+1", "y=1+2x"), ("2x-y+1=0", "y=2x+1"), ("x+1=0", "2x+2=0"),
    ("0=x+1", "x+1=0"), ("y = -\\frac{1}{2}x + 3", "y=-0.5x+3"), ("x^2+y^2=25", "y^2+x^2=25"),
    ("k=5", "5"), ("f(x)=x^2", "x^2"),
    ("(-\\infty, 3]", "(-\\infty,3)"), ("[1,2)", "[1, 2)"), ("(1,2)", "(2,1)"), ("(-4,0)", "[-4,0)"),
    ("(-\\infty,\\infty)", "\\mathbb{R}"), ("[2,\\infty)", "x\\ge2"), ("(0, \\frac{1}{2})", "(0,0.5)"),
    ("(1,4.5)", "(1,\\frac{9}{2})"), ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("(2, -1, 3)", "(2,-1,3)"), ("(2,-1)", "(2,-1,3)"), ("\\{1,2\\}", "\\{2,1\\}"), ("\\{1,2,3\\}", "1,2,3"),
    ("1, 2, 3", "3,2,1"), ("-2, 3", "3, -2"), ("x=2 \\text{ or } x=3", "2,3"), ("\\emptyset", "\\{\\}"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
    ("\\begin{bmatrix} 1 & 2 \\\\ 3 & 4 \\end{bmatrix}", "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}"),
    ("\\begin{pmatrix} 0.5 \\\\ 1 \\end{pmatrix}", "\\begin{pmatrix} \\frac12 \\\\ 1 \\end{pmatrix}"),
    ("\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}", "\\begin{pmatrix} 1 & 0 \\\\ 0 & 2 \\end{pmatrix}"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "(1,2)"), ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "{1,2}"),
    ("\\begin{array}{c} 3 \\\\ 4 \\end{array}", "\\begin{pmatrix} 3 \\\\ 4 \\end{pmatrix}"),
    ("1+2i", "2i+1"), ("3-4j", "3-4i"), ("\\frac{1}{2}+\\frac{\\sqrt{3}}{2}i", "\\frac{1+i\\sqrt{3}}{2}"),
    ("50\\%", "0.5"), ("1.6 \\times 10^{3}", "1600"), ("1.6e3", "1600"), ("6.02 \\times 10^{23}", "6.02e23"),
    ("\\$18.50", "18.5"), ("\\text{(C)}", "C"), ("\\text{Saturday}", "\\text{Saturday}"), ("east", "\\text{east}"),
    ("\\infty", "\\infty"), ("-\\infty", "\\infty"), ("a+b", "b+a"), ("ab", "ba"), ("\\alpha", "\\beta"),
    ("len('abc')", "3"), ("abs(-4)", "4"), ("int(7.9)", "7"), ("max(2, 5)", "5"),
    ("'3'", "3"), ("'x+1'", "x+1"), ("~2", "-3"), ("_x", "x"),
    ("(x+1)^{40}", "(1+x)^{40}"), ("x^{x^{x^{x^{9}}}}", "x^{x^{x^{x^{8}}}}"),
    ("\\frac{(x+1)^{30}-(x-1)^{30}}{x^{29}}", "\\frac{(x-1)^{30}}{x}"),
]


def build_corpus(seed: int, rows_per_bench: int, variants_per_row: int, runs_globs: list[str]) -> tuple[list, dict]:
    rng = random.Random(seed)
    pairs: list[dict] = []
    info: dict = {"real_files": {}, "kinds": Counter()}
    rows = {b: load_rows(b) for b in BENCHMARKS}

    def add(bench, example, completion, kind, tag, source):
        pairs.append({"pid": len(pairs), "bench": bench, "kind": kind, "tag": tag, "source": source,
                      "example": example, "completion": completion})
        info["kinds"][kind] += 1

    # (a) real completions
    seen = set()
    files = sorted({f for pat in runs_globs for f in glob.glob(str(REPO / pat), recursive=True)})
    for f in files:
        bench = Path(f).stem
        if bench not in BENCHMARKS:
            continue
        by_idx = {r.get("idx", i): r for i, r in enumerate(rows[bench])}
        n = 0
        for line in open(f):
            if not line.strip():
                continue
            rec = json.loads(line)
            if "completion" not in rec:
                continue
            key = rec.get("idx", rec.get("id"))
            try:
                example = by_idx[int(key)]
            except (KeyError, TypeError, ValueError):
                continue
            dedup = (bench, int(key), rec["completion"])
            if dedup in seen:
                continue
            seen.add(dedup)
            add(bench, example, rec["completion"], "real", "model", os.path.relpath(f, REPO))
            n += 1
        info["real_files"][os.path.relpath(f, REPO)] = n

    # (b) synthetic completions on sampled rows
    for bench in BENCHMARKS:
        table = rows[bench]
        idxs = sorted(rng.sample(range(len(table)), min(rows_per_bench, len(table))))
        for i in idxs:
            row = table[i]
            j = rng.randrange(len(table))
            other = raw_gold(bench, table[j]) if j != i else raw_gold(bench, table[(j + 1) % len(table)])
            forced, opt = variants(bench, row, other, rng)
            k = max(0, variants_per_row - len(forced))
            chosen = forced + rng.sample(opt, min(k, len(opt)))
            for tag, completion in chosen:
                add(bench, row, completion, "synthetic", tag, f"row {row.get('idx', i)}")

    # (c) hand-written algebraic pairs
    for bench in ("math", "minerva_math"):
        for pred, gold in HANDCRAFTED:
            example = {"problem": "Synthetic problem.", "solution": f"Hence the answer is $\\boxed{{{gold}}}$.",
                       "idx": -1}
            add(bench, example, T_BOX % pred, "handcrafted", "algebra", "HANDCRAFTED")
    info["kinds"] = dict(info["kinds"])
    return pairs, info


# ------------------------------------------------------------------------------------------------------------------
# Our side, comparison, report
# ------------------------------------------------------------------------------------------------------------------

def grader_files(grading_file: str) -> tuple[Path, Path, list[Path]]:
    """(checkout root, graded path, files to hash) for ``lightreasoner.grading.__file__``: either the package
    ``<checkout>/src/lightreasoner/grading/__init__.py`` (every file under the package except ``__pycache__``) or the
    old single module ``<checkout>/src/lightreasoner/grading.py``."""
    f = Path(grading_file).resolve()
    if f.name == "__init__.py":  # package layout
        pkg = f.parent
        files = sorted((q for q in pkg.rglob("*") if q.is_file() and "__pycache__" not in q.relative_to(pkg).parts
                        and q.suffix != ".pyc"), key=lambda q: q.relative_to(pkg).as_posix())
        return f.parents[3], pkg, files
    return f.parents[2], f, [f]


def grader_hash(graded: Path, files: list[Path]) -> str:
    """Content hash of the grader. Single module: sha256 of its bytes (as recorded before the package split).
    Package: sha256 over every file, sorted by relative path, each as name, NUL, byte length, NUL, bytes."""
    if graded.is_file():
        return hashlib.sha256(graded.read_bytes()).hexdigest()[:16]
    h = hashlib.sha256()
    for q in files:
        data = q.read_bytes()
        h.update(q.relative_to(graded).as_posix().encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()[:16]


def grader_provenance(grading_file: str) -> dict:
    """Which grader was measured: its files, content hash and the git state of the checkout it lives in."""
    root, graded, files = grader_files(grading_file)
    data_file = graded.parent / "grading_data.py"  # tables the grader imports (both layouts)
    rels = [os.path.relpath(graded, root)] + ([os.path.relpath(data_file, root)] if data_file.exists() else [])

    def g(*a):
        return subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True).stdout.strip()

    return {"grading_path": str(graded), "layout": "package" if graded.is_dir() else "module",
            "grading_files": [q.relative_to(graded).as_posix() for q in files] if graded.is_dir() else [graded.name],
            "grading_sha256_16": grader_hash(graded, files),
            "grading_data_sha256_16": sha256_file(str(data_file)), "checkout": str(root),
            "checkout_head": g("rev-parse", "--short", "HEAD"),
            # tracked changes and untracked files in the grader (and grading_data.py) against the checkout's HEAD
            "grading_differs_from_checkout_head": bool(g("status", "--porcelain", "--", *rels))}


def run_ours(pairs: list[dict]) -> tuple[dict, float, dict]:
    from lightreasoner import grading

    prov = grader_provenance(grading.__file__)  # taken at import time: the checkout may be edited meanwhile
    out: dict[int, dict] = {}
    t0 = time.time()
    by_bench = defaultdict(list)
    for p in pairs:
        by_bench[p["bench"]].append(p)
    for bench, group in by_bench.items():
        results = grading.grade_many(bench, [copy.deepcopy(p["example"]) for p in group],
                                     [p["completion"] for p in group], progress=False)
        for p, r in zip(group, results):
            out[p["pid"]] = {"pred": r.pred, "gold": r.gold, "correct": bool(r.correct), "error": r.error}
    seconds = time.time() - t0
    now = grader_provenance(grading.__file__)
    prov["grading_changed_during_run"] = (now["grading_sha256_16"], now["grading_data_sha256_16"]) != \
        (prov["grading_sha256_16"], prov["grading_data_sha256_16"])
    if prov["grading_changed_during_run"]:
        print("WARNING: the grader changed on disk during the run (the imported version was measured)")
    return out, seconds, prov


def run_toolkit(python: str, toolkit: str, corpus_path: str) -> tuple[dict, dict, float]:
    out_path = corpus_path + ".toolkit.json"
    t0 = time.time()
    proc = subprocess.run([python, os.path.abspath(__file__), "--toolkit-worker", "--toolkit", toolkit,
                           "--corpus", corpus_path, "--worker-out", out_path], capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"toolkit worker failed (rc {proc.returncode})")
    data = json.load(open(out_path))
    return {r["pid"]: r for r in data.pop("records")}, data, wall


def tail(text: str, n: int = 160) -> str:
    return text if len(text) <= n else "..." + text[-n:]


def reaches_structural(pred, gold) -> bool:
    """Whether the toolkit's math_equal gets past its string and numeric rules (brackets, tuples, matrices,
    equations, sympy) for this pair: both sides present, not equal as strings, not both numbers."""
    if not pred or gold is None or pred.strip().lower() == str(gold).strip().lower():
        return False
    try:
        float(pred.replace(",", "")), float(str(gold).replace(",", ""))
        return False
    except ValueError:
        return True


def compare(pairs, tk, ours) -> dict:
    stats: dict = {}
    for bench in BENCHMARKS + ("ALL",):
        stats[bench] = Counter()
    examples = defaultdict(list)
    by_tag = defaultdict(Counter)
    for p in pairs:
        t, o = tk[p["pid"]], ours[p["pid"]]
        for bench in (p["bench"], "ALL"):
            s = stats[bench]
            s["n"] += 1
            s[f"kind_{p['kind']}"] += 1
            if t["status"] in ("skipped", "crash"):
                s[f"toolkit_{t['status']}"] += 1
                continue
            s["compared"] += 1
            s["toolkit_correct"] += t["correct"]
            s["ours_correct"] += o["correct"]
            s["toolkit_timeouts"] += t["status"] == "timeout"
            s["toolkit_errors"] += t["status"] == "error"
            s["ours_errors"] += o["error"] is not None
            s["tool_call_branch"] += bool(t.get("tool_call_branch"))
            s["pred_differs"] += t.get("pred") != o["pred"]
            s["gold_differs"] += t.get("gold") != o["gold"]
            s["reaches_structural_rules"] += reaches_structural(t.get("pred"), t.get("gold"))
            agree = t["correct"] == o["correct"]
            s["agree"] += agree
            if not agree:
                s["disagree"] += 1
                s[f"disagree_{p['kind']}"] += 1
                s["disagree_toolkit_true"] += t["correct"]
                s["disagree_involves_timeout"] += t["status"] == "timeout" or bool(o["error"])
        if t["status"] in ("skipped", "crash"):
            continue
        by_tag[f"{p['bench']}:{p['tag']}"]["n"] += 1
        if t["correct"] != o["correct"]:
            by_tag[f"{p['bench']}:{p['tag']}"]["disagree"] += 1
            if len(examples[p["bench"]]) < MAX_EXAMPLES or sum(1 for e in examples[p["bench"]]
                                                                if e["tag"] == p["tag"]) == 0 \
                    and len(examples[p["bench"]]) < 2 * MAX_EXAMPLES:
                examples[p["bench"]].append({
                    "pid": p["pid"], "kind": p["kind"], "tag": p["tag"], "source": p["source"],
                    "completion_tail": tail(p["completion"]), "toolkit_pred": t.get("pred"), "ours_pred": o["pred"],
                    "toolkit_gold": t.get("gold"), "ours_gold": o["gold"], "toolkit_correct": t["correct"],
                    "toolkit_status": t["status"], "ours_correct": o["correct"], "ours_error": o["error"]})
    per = {}
    for bench, s in stats.items():
        d = dict(s)
        d.setdefault("agree", 0)
        d.setdefault("disagree", 0)
        d["agreement_pct"] = round(100.0 * d["agree"] / d["compared"], 2) if d.get("compared") else None
        if bench != "ALL":
            d["disagreements"] = examples.get(bench, [])
        per[bench] = d
    tags = {k: dict(v) for k, v in sorted(by_tag.items()) if v["disagree"]}
    crashes = [{"pid": p["pid"], "bench": p["bench"], "tag": p["tag"], "error": tk[p["pid"]].get("error"),
                "ours_pred": ours[p["pid"]]["pred"], "ours_correct": ours[p["pid"]]["correct"]}
               for p in pairs if tk[p["pid"]]["status"] == "crash"][:10]
    return {"per_benchmark": per, "disagreeing_tags": tags, "toolkit_crashes": crashes}


VERDICT_CODES = "1 = correct, 0 = wrong; toolkit only: t = timeout (wrong), s = skipped, c = crash"


def verdict_strings(pairs, tk, ours) -> dict:
    """Per-pair verdicts, one character per pair in pid order, so two labels on the same corpus can be diffed."""
    def tk_code(t):
        return {"timeout": "t", "skipped": "s", "crash": "c"}.get(t["status"], "1" if t["correct"] else "0")

    assert [p["pid"] for p in pairs] == list(range(len(pairs)))
    return {"codes": VERDICT_CODES, "toolkit": "".join(tk_code(tk[p["pid"]]) for p in pairs),
            "ours": "".join("1" if ours[p["pid"]]["correct"] else "0" for p in pairs)}


def verdict_changes(label, result, runs, pairs, tk, ours, limit: int = 50) -> dict:
    """Pairs whose verdict (ours) differs from each other label measured on the same corpus with verdicts kept."""
    changes = {}
    for other, r in runs.items():
        v = r.get("verdicts")
        if other == label or not v or r.get("corpus", {}).get("sha256_16") != result["corpus"]["sha256_16"]:
            continue
        now = result["verdicts"]["ours"]
        diff = [i for i, (a, b) in enumerate(zip(v["ours"], now)) if a != b]
        changes[other] = {"count": len(diff), "pairs": [
            {"pid": i, "bench": pairs[i]["bench"], "kind": pairs[i]["kind"], "tag": pairs[i]["tag"],
             "source": pairs[i]["source"], "completion_tail": tail(pairs[i]["completion"]),
             "was": v["ours"][i] == "1", "now": ours[i]["correct"], "toolkit": tk[i].get("correct"),
             "toolkit_status": tk[i]["status"], "ours_pred": ours[i]["pred"], "ours_gold": ours[i]["gold"],
             "ours_error": ours[i]["error"]} for i in diff[:limit]]}
    return changes


def sha256_file(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def print_table(label: str, result: dict) -> None:
    per = result["per_benchmark"]
    print(f"\n[{label}] verdict parity with the Qwen2.5-Math toolkit")
    print(f"{'benchmark':<14}{'n':>6}{'agree':>7}{'disagr':>7}{'agree%':>8}{'tk acc':>8}{'our acc':>8}"
          f"{'tk t/o':>7}{'predΔ':>7}{'goldΔ':>7}{'symb':>6}")
    for bench in BENCHMARKS + ("ALL",):
        d = per[bench]
        c = d.get("compared", 0) or 1
        print(f"{bench:<14}{d.get('n', 0):>6}{d['agree']:>7}{d['disagree']:>7}{d['agreement_pct'] or 0:>8.2f}"
              f"{100 * d.get('toolkit_correct', 0) / c:>8.1f}{100 * d.get('ours_correct', 0) / c:>8.1f}"
              f"{d.get('toolkit_timeouts', 0):>7}{d.get('pred_differs', 0):>7}{d.get('gold_differs', 0):>7}"
              f"{d.get('reaches_structural_rules', 0):>6}")
    t = result["timing"]
    print("(predΔ/goldΔ: extracted prediction / compared gold strings differ; symb: pairs past the string and "
          "numeric rules)")
    print(f"time: toolkit {t['toolkit_wall_s']:.0f}s (math_equal {t['toolkit_math_equal_s']:.0f}s), "
          f"ours {t['ours_s']:.0f}s; toolkit crashes {per['ALL'].get('toolkit_crash', 0)}, "
          f"skipped {per['ALL'].get('toolkit_skipped', 0)}")
    for bench in BENCHMARKS:
        for e in per[bench]["disagreements"]:
            print(f"  {bench}/{e['tag']}: pred tk={e['toolkit_pred']!r} ours={e['ours_pred']!r} "
                  f"gold tk={e['toolkit_gold']!r} ours={e['ours_gold']!r} -> tk={e['toolkit_correct']}"
                  f"({e['toolkit_status']}) ours={e['ours_correct']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--toolkit", required=True, help="the exported evaluation/ folder of QwenLM/Qwen2.5-Math")
    ap.add_argument("--toolkit-commit", default="a45202b", help="recorded only: the commit the folder came from")
    ap.add_argument("--python", default=sys.executable, help="interpreter that can import the toolkit")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "grading_parity.json"))
    ap.add_argument("--label", default="before")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", type=int, default=300, help="sampled rows per benchmark")
    ap.add_argument("--variants", type=int, default=3, help="synthetic completions per sampled row")
    ap.add_argument("--runs-glob", action="append", default=None,
                    help="glob (relative to the checkout) of model-completion files; repeatable; default "
                         "benchmarks/runs/**/gsm8k.jsonl and benchmarks/runs/**/eval/**/*.jsonl")
    ap.add_argument("--corpus", default="/tmp/grading_parity_corpus.jsonl")
    ap.add_argument("--toolkit-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.toolkit_worker:
        toolkit_worker(args.toolkit, args.corpus, args.worker_out)
        return

    if args.runs_glob is None:
        args.runs_glob = ["benchmarks/runs/**/gsm8k.jsonl", "benchmarks/runs/**/eval/**/*.jsonl"]
    t0 = time.time()
    pairs, info = build_corpus(args.seed, args.rows, args.variants, args.runs_glob)
    with open(args.corpus, "w") as f:
        for p in pairs:
            f.write(json.dumps(p, sort_keys=True) + "\n")
    corpus_sha = sha256_file(args.corpus)
    t_corpus = time.time() - t0
    print(f"corpus: {len(pairs)} pairs -> {args.corpus} (sha256 {corpus_sha}, {t_corpus:.0f}s); {info['kinds']}",
          flush=True)

    tk, tk_meta, tk_wall = run_toolkit(args.python, args.toolkit, args.corpus)
    print(f"toolkit: {tk_wall:.0f}s, {tk_meta['timeouts']} timeouts", flush=True)
    ours, ours_s, prov = run_ours(pairs)
    print(f"ours: {ours_s:.0f}s ({prov})", flush=True)

    result = compare(pairs, tk, ours)
    result.update({
        "label": args.label,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "ours": prov,
        "toolkit": {"dir": os.path.abspath(args.toolkit), "commit": args.toolkit_commit, "python": args.python,
                    "grader_sha256_16": sha256_file(os.path.join(args.toolkit, "grader.py")),
                    "parser_sha256_16": sha256_file(os.path.join(args.toolkit, "parser.py"))},
        "corpus": {"pairs": len(pairs), "sha256_16": corpus_sha, "seed": args.seed, "rows_per_benchmark": args.rows,
                   "variants_per_row": args.variants, **info},
        "timing": {"corpus_s": round(t_corpus, 1), "toolkit_wall_s": round(tk_wall, 1),
                   "toolkit_prepare_s": round(tk_meta["seconds_prepare"], 1),
                   "toolkit_math_equal_s": round(tk_meta["seconds_math_equal"], 1), "ours_s": round(ours_s, 1)},
    })
    result["verdicts"] = verdict_strings(pairs, tk, ours)
    result["disagreeing_pids"] = [p["pid"] for p in pairs if tk[p["pid"]]["status"] not in ("skipped", "crash")
                                  and tk[p["pid"]]["correct"] != ours[p["pid"]]["correct"]]
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.exists() else {}
    result["ours_verdict_changes"] = verdict_changes(args.label, result, doc.get("runs", {}), pairs, tk, ours)
    doc.setdefault("description", "Verdict parity of lightreasoner.grading with the Qwen2.5-Math toolkit "
                                  "(benchmarks/grading_parity.py); runs[label] per measurement.")
    doc.setdefault("runs", {})[args.label] = result
    out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print_table(args.label, result)
    for other, ch in result["ours_verdict_changes"].items():
        print(f"\nour verdict changed on {ch['count']} pairs vs runs.{other} (same corpus)")
        for e in ch["pairs"]:
            print(f"  pid {e['pid']} {e['bench']}/{e['tag']}: {e['was']} -> {e['now']} (toolkit {e['toolkit']}); "
                  f"pred {e['ours_pred']!r} gold {e['ours_gold']!r} error {e['ours_error']!r}")
    print(f"\nwrote {out} [runs.{args.label}]")


if __name__ == "__main__":
    main()
