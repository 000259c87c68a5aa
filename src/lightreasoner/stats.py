"""Statistics of evaluation runs: accuracy intervals, paired comparisons of two runs, and their power.

Two runs of the same benchmark are paired problem by problem. What tells them apart is the discordant pairs:
``a_only`` problems that A got right and B wrong, ``b_only`` the reverse. From those:

- :func:`mcnemar_exact`: the exact two-sided McNemar p-value (a binomial test on the discordant pairs);
- :func:`paired_change_ci`: the 95% (Wald, paired) interval of the accuracy change B - A, in points;
- :func:`min_detectable_difference`: the smallest change that a comparison of ``n`` problems with this much
  disagreement detects with 80% power at the 5% level (what a "no significant difference" can rule out).

:func:`accuracy_ci` is the 95% (Wilson) interval of one accuracy. :func:`compare_runs` pairs two eval output
folders (:func:`load_run`) and applies all of the above per benchmark and pooled.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from .benchmarks import ALL_BENCHMARKS
from .utils import InputError, read_complete_jsonl

Z95 = 1.959964  # two-sided 5% level
Z80 = 0.841621  # 80% power (one-sided 20%)
MIN_DISCORDANT = 6  # the exact two-sided McNemar test cannot reach p < 0.05 on fewer (5 all one way: p = 0.0625)


def accuracy_ci(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy ``correct / n``, in points, rounded to one decimal.

    Unlike the Wald interval it stays inside [0, 100] and is not empty at 0 or n right.
    """
    if n <= 0 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n and n > 0, got correct = {correct}, n = {n}")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return round(100 * max(centre - half, 0.0), 1), round(100 * min(centre + half, 1.0), 1)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: a binomial(b + c, 1/2) test on the discordant pairs ``b`` and ``c``.

    ``p = min(1, 2 * P(X <= min(b, c)))``; ``1.0`` when there are no discordant pairs.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b}, {c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2 ** n)


def paired_change_ci(a_only: int, b_only: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% interval (Wald, paired) for the accuracy change B - A, in points, from the discordant counts.

    The change is ``d = (b_only - a_only) / n``; for paired right/wrong outcomes its variance is
    ``((a_only + b_only) / n - d**2) / n``. Returns ``(low, high)`` rounded to one decimal, within
    ``[-100, 100]``. Like every Wald interval it is only as good as its normal approximation: fine with tens of
    discordant pairs (every comparison in this project's results), too narrow with a handful (zero width when
    none disagree); then read the exact :func:`mcnemar_exact` p-value.
    """
    if n <= 0:
        raise ValueError(f"need at least one paired problem, got n = {n}")
    d = (b_only - a_only) / n
    half = z * math.sqrt(max((a_only + b_only) / n - d * d, 0.0) / n)
    return max(round(100 * (d - half), 1), -100.0), min(round(100 * (d + half), 1), 100.0)


def min_detectable_difference(n: int, discordance: float, z_alpha: float = Z95,
                              z_power: float = Z80) -> float | None:
    """The smallest accuracy change (points, one decimal) that a paired comparison of ``n`` problems detects with
    about 80% power in a two-sided 5% test, when a fraction ``discordance`` of the pairs disagree.

    The normal approximation of McNemar's test (Connor 1987): a change ``d`` (a fraction) is detected with that
    power when ``d * sqrt(n) = z_alpha * sqrt(psi) + z_power * sqrt(psi - d**2)``, ``psi`` the discordance; the
    left side grows and the right side shrinks with ``d``, so the root is found by bisection. It slightly
    overstates the exact test's power (about 78% instead of 80% at n = 1,319 and ~20% discordance). ``None`` when
    nothing is detectable: too few discordant pairs for the exact test ever to reject (:data:`MIN_DISCORDANT`;
    none at all leave no spread to estimate), or ``n`` too small for any change that this discordance allows
    (``|d| <= psi``).
    """
    if n <= 0:
        raise ValueError(f"need at least one paired problem, got n = {n}")
    if not 0 <= discordance <= 1:
        raise ValueError(f"discordance is a fraction of the pairs, got {discordance}")
    psi = discordance
    if round(psi * n) < MIN_DISCORDANT:
        return None

    def gap(d: float) -> float:
        return d * math.sqrt(n) - z_alpha * math.sqrt(psi) - z_power * math.sqrt(max(psi - d * d, 0.0))

    lo, hi = 0.0, psi  # a change can be no larger than the share of pairs that disagree
    if gap(hi) < 0:
        return None
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gap(mid) < 0 else (lo, mid)
    return round(100 * hi, 1)


def pairs_required(d: float, discordance: float, z_alpha: float = Z95, z_power: float = Z80) -> float:
    """The paired problems needed to detect a change ``d`` (a fraction) with that power (the inverse of
    :func:`min_detectable_difference`, Connor 1987)."""
    psi = discordance
    return ((z_alpha * math.sqrt(psi) + z_power * math.sqrt(psi - d * d)) / d) ** 2


# ---------------------------------------------------------------------------------------------------------------
# Two runs


def load_run(run: str | Path) -> dict[str, dict[str, bool]]:
    """``{benchmark: {id: correct}}`` from an eval output folder's ``<benchmark>.jsonl`` files."""
    folder = Path(run)
    if not folder.is_dir():
        raise InputError(f"--compare: {run} is not a folder")
    out: dict[str, dict[str, bool]] = {}
    for b in ALL_BENCHMARKS:
        f = folder / f"{b}.jsonl"
        if f.exists():
            out[b] = {str(r["id"]): bool(r["correct"]) for r in read_complete_jsonl(f)}
    if not out:
        raise InputError(f"--compare: {run} holds no <benchmark>.jsonl files of `lightreasoner eval`")
    return out


def _paired(n: int, a_only: int, b_only: int) -> dict[str, Any]:
    """The paired figures of ``n`` problems: p-value, interval of B - A, smallest change detectable."""
    return {"p_value": mcnemar_exact(a_only, b_only), "delta_ci95": paired_change_ci(a_only, b_only, n),
            "min_detectable_80": min_detectable_difference(n, (a_only + b_only) / n)}


def paired_counts(n: int, a_right: int, b_right: int, a_only: int, b_only: int) -> dict[str, Any]:
    """One benchmark's pairing from its counts: accuracies of A and B, B - A, the discordant counts, and
    :func:`_paired`'s figures (what :func:`compare_runs` gives per benchmark, without the unpaired counts)."""
    return {"n": n, "acc_a": round(100 * a_right / n, 1), "acc_b": round(100 * b_right / n, 1),
            "delta": round(100 * (b_right - a_right) / n, 1), "a_only": a_only, "b_only": b_only,
            **_paired(n, a_only, b_only)}


def compare_runs(run_a: str | Path, run_b: str | Path) -> dict[str, Any]:
    """Pair two eval runs problem by problem, per benchmark both hold.

    For each benchmark: ``n`` paired problems (ids in both), accuracies of A and B on them, ``a_only`` (A right,
    B wrong), ``b_only`` (B right, A wrong), the exact McNemar ``p_value``, the 95% interval of B - A
    (``delta_ci95``) and the smallest change detectable at 80% power (``min_detectable_80``, points). ``all``
    pools every pair (its accuracies, change and paired figures are the pooled problems'); ``average`` is the
    mean of the per-benchmark accuracies and its change (the paper's headline; no test of its own). Ids in only
    one run are counted, not paired.
    """
    a, b = load_run(run_a), load_run(run_b)
    rows: dict[str, dict[str, Any]] = {}
    pooled = {"n": 0, "a_right": 0, "b_right": 0, "a_only": 0, "b_only": 0}
    for name in ALL_BENCHMARKS:
        if name not in a or name not in b:
            continue
        ids = [i for i in a[name] if i in b[name]]
        if not ids:
            continue
        ar = sum(a[name][i] for i in ids)
        br = sum(b[name][i] for i in ids)
        ao = sum(a[name][i] and not b[name][i] for i in ids)
        bo = sum(b[name][i] and not a[name][i] for i in ids)
        n = len(ids)
        rows[name] = {**paired_counts(n, ar, br, ao, bo), "a_right": ar, "b_right": br,
                      "unpaired_a": len(a[name]) - n, "unpaired_b": len(b[name]) - n}
        for k, v in (("n", n), ("a_right", ar), ("b_right", br), ("a_only", ao), ("b_only", bo)):
            pooled[k] += v
    if not rows:
        raise InputError(f"--compare: {run_a} and {run_b} share no benchmark problems")
    mean_a = statistics.fmean(100 * r["a_right"] / r["n"] for r in rows.values())  # unrounded, then rounded
    mean_b = statistics.fmean(100 * r["b_right"] / r["n"] for r in rows.values())
    return {"run_a": str(run_a), "run_b": str(run_b), "benchmarks": rows,
            "average": {"acc_a": round(mean_a, 1), "acc_b": round(mean_b, 1), "delta": round(mean_b - mean_a, 1)},
            "all": {**paired_counts(pooled["n"], pooled["a_right"], pooled["b_right"], pooled["a_only"],
                                    pooled["b_only"]), "a_right": pooled["a_right"], "b_right": pooled["b_right"]},
            "only_in_a": sorted(set(a) - set(b)), "only_in_b": sorted(set(b) - set(a))}
