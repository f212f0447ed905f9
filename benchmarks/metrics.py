"""Faithfulness metrics of an attribution against gold leave-one-out scores (pure numpy).

Every function takes one example's score vectors (one score per context sentence, in the
attributor's flat order) and returns a float, ``nan`` where the metric is undefined for that
example (a constant vector has no correlation; an example without gold outliers has no AP).
:func:`mean_defined` averages over the examples where it is defined and counts the others.

Ranking metrics (AP, top-1, precision/recall at k) are *tie-aware*: when a method gives several
sentences the same score (e.g. the 0 of every sentence a pruning strategy did not score), the
metric is its expected value over uniformly random orders of the tied sentences, estimated
with a fixed number of seeded shuffles so results are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

TIE_SAMPLES = 200  # seeded random tie-breaks averaged when a score vector has ties


def _as_array(x: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D score vector, got shape {arr.shape}")
    return arr


def rankdata(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank (scipy's ``rankdata(method="average")``)."""
    a = _as_array(x)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a), dtype=np.float64)
    sorted_a = a[order]
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and sorted_a[j + 1] == sorted_a[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(pred: Sequence[float], gold: Sequence[float]) -> float:
    """Pearson correlation; ``nan`` when gold is constant or shorter than 2 (undefined for every
    method alike: the example is skipped and counted), ``0.0`` when only the prediction is constant.

    A method that gives every sentence the same score (ContextCite's LASSO when it keeps no
    sentence) ranks nothing: it scores as no correlation, never as a skipped example, which
    would leave its failures out of its mean.
    """
    p, g = _as_array(pred), _as_array(gold)
    if len(p) != len(g):
        raise ValueError(f"length mismatch: {len(p)} predicted vs {len(g)} gold scores")
    if len(p) < 2:
        return float("nan")
    p, g = p - p.mean(), g - g.mean()
    gg, pp = (g * g).sum(), (p * p).sum()
    if gg == 0 or not np.isfinite(gg):
        return float("nan")
    if pp == 0:
        return 0.0
    denom = np.sqrt(pp * gg)
    if not np.isfinite(denom):
        return float("nan")
    return float(np.clip((p * g).sum() / denom, -1.0, 1.0))


def spearman(pred: Sequence[float], gold: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson of average ranks); ``nan`` when undefined."""
    return pearson(rankdata(pred), rankdata(gold))


def outlier_threshold(gold: Sequence[float]) -> float:
    """Q3 + 1.5 IQR of the gold scores (numpy's default linear percentiles)."""
    g = _as_array(gold)
    q1, q3 = np.percentile(g, [25, 75])
    return float(q3 + 1.5 * (q3 - q1))


def gold_outliers(gold: Sequence[float]) -> np.ndarray:
    """Boolean mask of the sentences whose gold score lies strictly above Q3 + 1.5 IQR."""
    g = _as_array(gold)
    if len(g) == 0:
        return np.zeros(0, dtype=bool)
    return g > outlier_threshold(g)


def _orders(scores: np.ndarray, samples: int = TIE_SAMPLES, seed: int = 0) -> list[np.ndarray]:
    """Descending orders of ``scores``: one if there are no ties, else ``samples`` random tie-breaks."""
    if len(np.unique(scores)) == len(scores):
        return [np.argsort(-scores, kind="mergesort")]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(samples):
        jitter = rng.permutation(len(scores))
        out.append(np.lexsort((jitter, -scores)))  # primary key: -score; ties by random position
    return out


def _tie_aware(scores: Sequence[float], fn: Callable[[np.ndarray], float]) -> float:
    s = _as_array(scores)
    return float(np.mean([fn(order) for order in _orders(s)]))


def average_precision(scores: Sequence[float], relevant: Sequence[bool]) -> float:
    """AP of ranking by ``scores`` (descending) for the ``relevant`` items; ``nan`` if none is."""
    rel = np.asarray(relevant, dtype=bool)
    if len(rel) != len(scores):
        raise ValueError(f"length mismatch: {len(scores)} scores vs {len(rel)} relevance labels")
    if not rel.any():
        return float("nan")

    def ap(order: np.ndarray) -> float:
        hits = rel[order]
        precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        return float(precision_at[hits].mean())

    return _tie_aware(scores, ap)


def outlier_ap(pred: Sequence[float], gold: Sequence[float]) -> float:
    """AP of recovering the gold LOO outliers (see :func:`gold_outliers`); ``nan`` if there are none."""
    return average_precision(pred, gold_outliers(gold))


def top1_agreement(pred: Sequence[float], gold: Sequence[float]) -> float:
    """Probability that the method's top sentence is gold's top sentence (ties split evenly)."""
    p, g = _as_array(pred), _as_array(gold)
    if len(p) != len(g):
        raise ValueError(f"length mismatch: {len(p)} predicted vs {len(g)} gold scores")
    if len(p) == 0:
        return float("nan")
    best_gold = set(np.flatnonzero(g == g.max()).tolist())
    tied_top = np.flatnonzero(p == p.max())
    return float(np.mean([i in best_gold for i in tied_top]))


def precision_recall_at_k(scores: Sequence[float], relevant: Sequence[bool], k: int) -> tuple[float, float]:
    """Precision and recall of the ``k`` top-scored items against ``relevant`` (tie-aware).

    Recall is ``nan`` when nothing is relevant.
    """
    rel = np.asarray(relevant, dtype=bool)
    if len(rel) != len(scores):
        raise ValueError(f"length mismatch: {len(scores)} scores vs {len(rel)} relevance labels")
    if k < 1:
        raise ValueError("k must be >= 1")
    k = min(k, len(rel))
    if k == 0:
        return float("nan"), float("nan")
    n_rel = int(rel.sum())
    hits = _tie_aware(scores, lambda order: float(rel[order[:k]].sum()))
    return hits / k, (hits / n_rel if n_rel else float("nan"))


def hit_at_1(scores: Sequence[float], relevant: Sequence[bool]) -> float:
    """Probability that the top-scored item is relevant (ties split evenly)."""
    s = _as_array(scores)
    rel = np.asarray(relevant, dtype=bool)
    if len(s) == 0:
        return float("nan")
    return float(rel[np.flatnonzero(s == s.max())].mean())


def mean_defined(values: Iterable[float]) -> tuple[float, int, int]:
    """Mean over the finite values, with (number used, number skipped as undefined)."""
    vals = [float(v) for v in values]
    ok = [v for v in vals if np.isfinite(v)]
    return (float(np.mean(ok)) if ok else float("nan")), len(ok), len(vals) - len(ok)


def pareto_front(points: dict[str, tuple[float, float]], decimals: int | None = 3) -> set[str]:
    """Names of the points no other point dominates: (cost, quality), lower cost and higher quality better.

    A point is dominated by one at most as costly and at least as good, strictly better in one
    of the two. Qualities are compared after rounding to ``decimals`` (the precision a table
    shows), so float noise between equally faithful methods decides nothing; points with a
    ``nan`` quality are never on the front.
    """
    def q(v: float) -> float:
        return round(v, decimals) if decimals is not None else v

    clean = {n: (c, q(v)) for n, (c, v) in points.items() if np.isfinite(v) and np.isfinite(c)}
    front = set()
    for name, (cost, qual) in clean.items():
        dominated = any(
            oc <= cost and oq >= qual and (oc < cost or oq > qual)
            for other, (oc, oq) in clean.items() if other != name
        )
        if not dominated:
            front.add(name)
    return front


def dominates_report(name: str, points: dict[str, tuple[float, float]], decimals: int | None = 3) -> dict:
    """Why ``name`` is or is not on the front: the methods that dominate it, if any."""
    def q(v: float) -> float:
        return round(v, decimals) if decimals is not None else v

    cost, qual = points[name]
    if not (np.isfinite(cost) and np.isfinite(qual)):
        return {"on_front": False, "dominated_by": [], "reason": "its faithfulness is undefined"}
    by = [
        other for other, (oc, oq) in points.items()
        if other != name and np.isfinite(oq) and np.isfinite(oc)
        and oc <= cost and q(oq) >= q(qual) and (oc < cost or q(oq) > q(qual))
    ]
    return {"on_front": not by, "dominated_by": sorted(by)}


def dtype_effect(per_example: list[dict]) -> dict[str, Any] | None:
    """What the methods' dtype costs in exactness and buys in time, from the run's own scores.

    Gold (fp32, cached engine) against ``cached-batched`` (the methods' dtype, the same cached
    engine) isolates the dtype; ``naive-exact`` (the methods' dtype, uncached) against
    ``cached-batched`` shows what caching changes in that dtype (on the naive subset only).
    ``None`` when the run lacks the cached-batched method.
    """
    gold_vs_cached, time_ratios, cache_diffs, cache_r = [], [], [], []
    for e in per_example:
        if e["gold"].get("engine") == "exact":  # uncached gold: the time ratio would mix engine and dtype
            continue
        c = e["methods"].get("cached-batched")
        if not c or c.get("error") is not None or not c.get("scores"):
            continue
        cached, gold = np.asarray(c["scores"], float), np.asarray(e["gold"]["scores"], float)
        gold_vs_cached.append(float(np.abs(cached - gold).max()))
        time_ratios.append(e["gold"]["seconds"] / c["seconds"])
        n = e["methods"].get("naive-exact")
        if n and n.get("error") is None and n.get("scores"):
            naive = np.asarray(n["scores"], float)
            cache_diffs.append(float(np.abs(cached - naive).max()))
            cache_r.append(float(np.corrcoef(cached, naive)[0, 1]))
    if not gold_vs_cached:
        return None
    return {
        "examples": len(gold_vs_cached),
        "max_abs_vs_gold": max(gold_vs_cached),  # nats, worst sentence of any example
        "median_example_max_abs_vs_gold": float(np.median(gold_vs_cached)),
        "gold_seconds_over_cached": float(np.mean(time_ratios)),  # gold dtype's time / the methods' dtype's time
        "cached_vs_uncached": {"examples": len(cache_diffs), "max_abs": max(cache_diffs, default=None),
                               "min_pearson": min(cache_r, default=None)},
    }


def _at_least(r: float) -> str:
    return "> 0.9999" if r > 0.9999 else f">= {r:.4f}"  # 0.9999995 must not print as 1.0000


def dtype_effect_text(summary: dict) -> str:
    """One sentence on :func:`dtype_effect` (the table's notes and the README use it)."""
    e, methods_dtype, gold_dtype = summary["dtype_effect"], summary["dtype"], summary["gold_dtype"]
    cu = e["cached_vs_uncached"]
    text = (f"{methods_dtype} against {gold_dtype} gold (same cached engine, {e['examples']} examples): sentence "
            f"scores differ by up to {e['max_abs_vs_gold']:.3f} nats (median of the per-example maxima "
            f"{e['median_example_max_abs_vs_gold']:.3f}); {gold_dtype} took {e['gold_seconds_over_cached']:.1f}x "
            f"the {methods_dtype} time.")
    if cu["examples"]:
        text += (f" In {methods_dtype}, cached and uncached exact LOO differ by up to {cu['max_abs']:.3f} nats "
                 f"(Pearson {_at_least(cu['min_pearson'])}; {cu['examples']} naive-subset example"
                 f"{'s' if cu['examples'] != 1 else ''}).")
    return text
