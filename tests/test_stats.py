"""Statistics of evaluation runs: McNemar, paired intervals, accuracy intervals, power (lightreasoner.stats)."""

from __future__ import annotations

import math
import random

import pytest

from lightreasoner import stats as ST


def test_paired_change_interval():
    lo, hi = ST.paired_change_ci(11, 21, 150)  # the first end-to-end run: +6.7 points, p = 0.11
    assert lo < 0 < hi and (lo + hi) / 2 == pytest.approx(100 * 10 / 150, abs=0.1)
    lo4, hi4 = ST.paired_change_ci(44, 84, 600)  # same proportions, 4x the problems: half the width
    assert (hi4 - lo4) == pytest.approx((hi - lo) / 2, abs=0.2) and lo4 > 0
    assert ST.paired_change_ci(0, 0, 50) == (0.0, 0.0)
    assert ST.paired_change_ci(0, 10, 10) == (100.0, 100.0)  # every problem fixed: no spread
    for a_only, b_only, n in ((0, 1, 2), (0, 2, 3), (1, 0, 2), (2, 1, 3)):  # a handful of pairs: never past 100
        lo, hi = ST.paired_change_ci(a_only, b_only, n)
        assert -100.0 <= lo <= hi <= 100.0
    with pytest.raises(ValueError, match="n = 0"):
        ST.paired_change_ci(0, 0, 0)


def test_mcnemar_exact_known_values():
    assert ST.mcnemar_exact(20, 7) == pytest.approx(0.0192, abs=5e-4)
    assert ST.mcnemar_exact(16, 14) == pytest.approx(0.8555, abs=5e-4)
    assert ST.mcnemar_exact(0, 0) == 1.0
    assert ST.mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert ST.mcnemar_exact(7, 20) == ST.mcnemar_exact(20, 7)
    assert ST.mcnemar_exact(5, 5) == 1.0
    # huge counts stay finite and tiny
    assert 0.0 <= ST.mcnemar_exact(3000, 100) < 1e-300
    with pytest.raises(ValueError):
        ST.mcnemar_exact(-1, 2)


def test_accuracy_interval_is_wilson():
    assert ST.accuracy_ci(50, 100) == (40.4, 59.6)
    lo, hi = ST.accuracy_ci(0, 10)
    assert lo == 0.0 and 0 < hi < 35  # not empty at 0 right, and never below 0
    assert ST.accuracy_ci(10, 10) == (round(100 - hi, 1), 100.0)
    assert ST.accuracy_ci(700, 1000)[1] - ST.accuracy_ci(700, 1000)[0] < ST.accuracy_ci(7, 10)[1] - ST.accuracy_ci(7, 10)[0]
    with pytest.raises(ValueError):
        ST.accuracy_ci(3, 0)


def test_smallest_detectable_difference_solves_the_power_equation():
    d = ST.min_detectable_difference(150, 32 / 150)  # the first end-to-end run's discordance
    assert d == 10.5
    psi = 32 / 150
    assert ST.pairs_required(d / 100, psi) == pytest.approx(150, rel=0.01)  # the sample-size formula inverts it
    z = d / 100 * math.sqrt(150) - ST.Z95 * math.sqrt(psi) - ST.Z80 * math.sqrt(psi - (d / 100) ** 2)
    assert abs(z) < 0.01
    # 4x the problems at the same discordance: about half the difference
    assert ST.min_detectable_difference(600, psi) == pytest.approx(d / 2, abs=0.2)
    # more disagreement, larger detectable change; none without disagreement or with too few problems
    assert ST.min_detectable_difference(150, 0.4) > d
    assert ST.min_detectable_difference(150, 0.0) is None and ST.min_detectable_difference(3, 0.5) is None
    # five discordant pairs can never give p < 0.05 (all one way: 2/32), so nothing is detectable; six can
    assert ST.mcnemar_exact(0, 5) > 0.05 and ST.mcnemar_exact(0, 6) < 0.05
    assert ST.min_detectable_difference(5, 1.0) is None and ST.min_detectable_difference(6, 1.0) is not None
    with pytest.raises(ValueError):
        ST.min_detectable_difference(0, 0.1)
    with pytest.raises(ValueError):
        ST.min_detectable_difference(10, 1.5)


def test_smallest_detectable_difference_has_80_percent_power():
    """Simulated paired runs differing by that much: the exact McNemar test finds it about 80% of the time (a
    little less: the exact test is conservative)."""
    n, psi = 400, 0.2
    d = ST.min_detectable_difference(n, psi) / 100
    rng = random.Random(0)
    hits, trials = 0, 1500
    for _ in range(trials):
        b = c = 0
        for _ in range(n):
            u = rng.random()
            if u < (psi + d) / 2:
                b += 1
            elif u < psi:
                c += 1
        hits += ST.mcnemar_exact(c, b) < 0.05
    assert 0.70 <= hits / trials <= 0.86
