"""The statistics of a study with repeats: means with t-intervals over seeds, McNemar's test on paired
predictions, paired differences. Pure functions of numbers, checked against hand-computed values."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
from scipy import stats as scipy_stats


def mean_interval(values, confidence: float = 0.95) -> dict:
    """Mean, sample standard deviation and the two-sided t-interval of the mean over `values` (e.g. seeds).

    One value: the interval is the value itself and std is 0 (nothing can be said about spread).
    """
    values = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": float("nan"), "std": float("nan"), "low": float("nan"), "high": float("nan"),
                "values": []}
    mean = float(values.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "std": 0.0, "low": mean, "high": mean, "values": values.tolist()}
    std = float(values.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "low": mean - half, "high": mean + half, "values": values.tolist()}


def mcnemar(correct_a, correct_b) -> dict:
    """McNemar's test of two classifiers on the same images: do they err on different images more often
    one way than the other? Uses the discordant pairs only: b = A right and B wrong, c = A wrong and B right.

    Exact two-sided binomial test when b + c < 25, else the chi-square statistic with continuity correction
    ((|b - c| - 1)^2 / (b + c), one degree of freedom).
    """
    correct_a, correct_b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if correct_a.shape != correct_b.shape:
        raise ValueError("McNemar needs the two models' results on the same images")
    b = int((correct_a & ~correct_b).sum())
    c = int((~correct_a & correct_b).sum())
    if b + c == 0:
        return {"b": 0, "c": 0, "statistic": 0.0, "p_value": 1.0, "method": "no discordant pairs"}
    if b + c < 25:
        p_value = float(scipy_stats.binomtest(b, b + c, 0.5).pvalue)
        return {"b": b, "c": c, "statistic": float(min(b, c)), "p_value": min(1.0, p_value), "method": "exact binomial"}
    statistic = (abs(b - c) - 1) ** 2 / (b + c)
    return {"b": b, "c": c, "statistic": float(statistic), "p_value": float(scipy_stats.chi2.sf(statistic, 1)),
            "method": "chi-square, continuity corrected"}


def paired_difference(a_values, b_values, confidence: float = 0.95) -> dict:
    """The mean of a - b over paired runs (same seed, same test images) with its t-interval."""
    if len(a_values) != len(b_values):
        raise ValueError("paired differences need one value of each model per seed")
    return mean_interval([a - b for a, b in zip(a_values, b_values)], confidence)


def compare_pairs(accuracies: dict[str, list[float]], correct: dict[str, list[np.ndarray]],
                  alpha: float = 0.05) -> list[dict]:
    """For every pair of models: McNemar per seed, the paired accuracy difference over seeds, and a verdict.

    accuracies[model][k] and correct[model][k] are the k-th seed's test accuracy and per-image correctness.
    A difference counts as distinguishable from noise when McNemar rejects at `alpha` on every seed and,
    with two or more seeds, the interval of the paired difference excludes zero.
    """
    pairs = []
    for a, b in combinations(accuracies, 2):
        tests = [mcnemar(x, y) for x, y in zip(correct[a], correct[b])]
        difference = paired_difference(accuracies[a], accuracies[b])
        every_seed = all(t["p_value"] < alpha for t in tests)
        interval_clear = difference["n"] < 2 or difference["low"] > 0 or difference["high"] < 0
        pairs.append({"a": a, "b": b, "mcnemar": tests, "difference": difference, "alpha": alpha,
                      "mcnemar_every_seed": bool(every_seed), "distinguishable": bool(every_seed and interval_clear)})
    return pairs


def describe_pair(pair: dict) -> str:
    """One plain sentence: which model is ahead, by how much (with the interval of that difference), and whether
    that is more than noise, saying which test decides when it is not."""
    d, a, b = pair["difference"], pair["a"], pair["b"]
    ahead, behind = (a, b) if d["mean"] >= 0 else (b, a)
    sign = 1 if d["mean"] >= 0 else -1  # the interval of (ahead - behind)
    low, high = sorted((sign * d["low"] * 100, sign * d["high"] * 100))
    p_values = ", ".join(f"{t['p_value']:.2g}" for t in pair["mcnemar"])
    interval = (f" (95% interval of that difference over {d['n']} seeds: {low:+.1f} to {high:+.1f} points)"
                if d["n"] > 1 else " (one seed: no interval)")
    if pair["distinguishable"]:
        verdict = "distinguishable from noise"
    elif pair["mcnemar_every_seed"]:
        verdict = (f"NOT distinguishable from noise yet: each seed's difference is beyond chance on these test "
                   f"images, but over {d['n']} seeds the interval still includes zero (more seeds narrow it)")
    else:
        verdict = f"NOT distinguishable from noise (McNemar p >= {pair['alpha']:g} on at least one seed)"
    return f"{ahead} is ahead of {behind} by {abs(d['mean']) * 100:.1f} points{interval}; McNemar p = {p_values} " \
           f"per seed: {verdict}."
