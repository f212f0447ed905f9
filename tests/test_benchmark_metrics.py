"""The faithfulness benchmark's metric functions (pure numpy; no models)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks import metrics as M


def test_rankdata_averages_ties():
    assert M.rankdata([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]


def test_pearson_and_spearman():
    gold = [0.1, 0.5, 2.0, -0.3]
    assert M.pearson(gold, gold) == pytest.approx(1.0)
    assert M.pearson([-x for x in gold], gold) == pytest.approx(-1.0)
    # a monotone but non-linear transform: Spearman 1, Pearson below 1
    pred = [math.exp(3 * x) for x in gold]
    assert M.spearman(pred, gold) == pytest.approx(1.0)
    assert M.pearson(pred, gold) < 0.99
    # hand-computed: x = [1, 2, 3], y = [1, 3, 2] -> r = 0.5
    assert M.pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert M.spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)


def test_correlation_undefined_is_nan():
    assert math.isnan(M.pearson([1, 2, 3], [1, 1, 1]))  # constant gold: undefined for every method
    assert math.isnan(M.spearman([1, 2, 3], [0, 0, 0]))
    assert math.isnan(M.pearson([1.0], [2.0]))


def test_constant_prediction_is_no_correlation_not_a_skip():
    """An all-zero attribution (ContextCite keeping no sentence) must count as 0 in the mean, not
    drop out of it: dropping its failures inflated its average."""
    assert M.pearson([1, 1, 1], [1, 2, 3]) == 0.0
    assert M.spearman([0, 0, 0], [1, 2, 3]) == 0.0
    mean, used, skipped = M.mean_defined([M.pearson(p, [1, 2, 3]) for p in ([1, 2, 3], [0, 0, 0])])
    assert (mean, used, skipped) == (0.5, 2, 0)
    with pytest.raises(ValueError):
        M.pearson([1, 2], [1, 2, 3])


def test_gold_outliers_q3_plus_1_5_iqr():
    gold = [0, 0, 0, 0, 0, 0, 0, 1, 10]
    # q1 = 0, q3 = 0 -> threshold 0: the strictly positive ones are outliers
    assert M.outlier_threshold(gold) == 0.0
    assert M.gold_outliers(gold).tolist() == [False] * 7 + [True, True]
    flat = [1.0, 2.0, 3.0, 4.0]  # q1 = 1.75, q3 = 3.25 -> threshold 5.5: no outliers
    assert not M.gold_outliers(flat).any()
    assert math.isnan(M.outlier_ap([4, 3, 2, 1], flat))


def test_average_precision_by_hand():
    relevant = [True, False, True, False]
    assert M.average_precision([0.9, 0.8, 0.7, 0.1], relevant) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert M.average_precision([0.9, 0.1, 0.8, 0.2], relevant) == pytest.approx(1.0)
    assert math.isnan(M.average_precision([1, 2, 3, 4], [False] * 4))


def test_average_precision_ties_are_expected_value():
    # the one relevant item ties with one other for the top: AP is 1 or 1/2, expected 3/4
    ap = M.average_precision([1.0, 1.0, 0.0], [True, False, False])
    assert ap == pytest.approx(0.75, abs=0.05)
    # deterministic: the same call gives the same number
    assert ap == M.average_precision([1.0, 1.0, 0.0], [True, False, False])


def test_outlier_ap_perfect_and_reversed():
    gold = np.array([0.0, 0.1, 0.0, 5.0, 0.05, 0.0, 0.02, 0.0])
    assert M.outlier_ap(gold, gold) == pytest.approx(1.0)
    assert M.outlier_ap(-gold, gold) == pytest.approx(1 / 8)


def test_top1_agreement():
    gold = [0.1, 3.0, 0.2]
    assert M.top1_agreement([0, 1, 0], gold) == 1.0
    assert M.top1_agreement([1, 0, 0], gold) == 0.0
    assert M.top1_agreement([1, 1, 0], gold) == 0.5  # a two-way tie for the top


def test_precision_recall_at_k():
    relevant = [True, False, True, False, False]
    p, r = M.precision_recall_at_k([5, 4, 3, 2, 1], relevant, k=2)
    assert (p, r) == (0.5, 0.5)
    p, r = M.precision_recall_at_k([5, 1, 4, 2, 3], relevant, k=2)
    assert (p, r) == (1.0, 1.0)
    p, r = M.precision_recall_at_k([5, 1, 4, 2, 3], relevant, k=10)  # k capped at the length
    assert p == pytest.approx(2 / 5) and r == 1.0
    p, r = M.precision_recall_at_k([1, 2, 3], [False] * 3, k=1)
    assert p == 0.0 and math.isnan(r)


def test_hit_at_1():
    assert M.hit_at_1([0.2, 0.9, 0.1], [False, True, False]) == 1.0
    assert M.hit_at_1([0.9, 0.9, 0.1], [False, True, False]) == 0.5


def test_mean_defined_counts_skips():
    mean, used, skipped = M.mean_defined([1.0, float("nan"), 3.0])
    assert (mean, used, skipped) == (2.0, 2, 1)
    mean, used, skipped = M.mean_defined([float("nan")])
    assert math.isnan(mean) and (used, skipped) == (0, 1)


def test_pareto_front():
    points = {
        "slow-best": (100.0, 1.0),
        "fast-good": (10.0, 0.9),
        "fast-worse": (10.0, 0.5),  # dominated by fast-good (same time, less faithful)
        "slower-worse": (50.0, 0.8),  # dominated by fast-good
        "fastest": (1.0, 0.1),
        "undefined": (0.5, float("nan")),
    }
    assert M.pareto_front(points) == {"slow-best", "fast-good", "fastest"}
    assert M.dominates_report("slower-worse", points) == {"on_front": False, "dominated_by": ["fast-good"]}
    assert M.dominates_report("fast-good", points)["on_front"]
    # qualities equal at 3 decimals: the faster one dominates
    assert M.pareto_front({"a": (1.0, 0.90001), "b": (2.0, 0.90004)}) == {"a"}


def test_dtype_effect_compares_gold_cached_and_uncached_scores():
    def ex(gold, cached, naive=None, gold_s=30.0, cached_s=10.0):
        methods = {"cached-batched": {"scores": cached, "seconds": cached_s, "error": None}}
        if naive is not None:
            methods["naive-exact"] = {"scores": naive, "seconds": 99.0, "error": None}
        return {"gold": {"scores": gold, "seconds": gold_s}, "methods": methods}

    per_example = [
        ex([1.0, 0.0, 2.0], [1.1, 0.0, 2.0], naive=[1.0, 0.05, 2.0]),
        ex([0.0, 3.0, 0.5], [0.0, 2.6, 0.5], gold_s=20.0),
        {"gold": {"scores": [1.0], "seconds": 1.0}, "methods": {"cached-batched": {"error": "OOM"}}},  # skipped
    ]
    e = M.dtype_effect(per_example)
    assert e["examples"] == 2
    assert e["max_abs_vs_gold"] == pytest.approx(0.4) and e["median_example_max_abs_vs_gold"] == pytest.approx(0.25)
    assert e["gold_seconds_over_cached"] == pytest.approx(2.5)  # mean of 3.0 and 2.0
    cu = e["cached_vs_uncached"]
    assert cu["examples"] == 1 and cu["max_abs"] == pytest.approx(0.1) and 0.99 < cu["min_pearson"] < 1.0
    text = M.dtype_effect_text({"dtype_effect": e, "dtype": "bfloat16", "gold_dtype": "float32"})
    assert "up to 0.400 nats" in text and "2.5x the bfloat16 time" in text and "1 naive-subset example)" in text
    assert M.dtype_effect([{"gold": {"scores": [1.0], "seconds": 1.0}, "methods": {}}]) is None
    uncached_gold = ex([1.0, 2.0], [1.0, 2.5])
    uncached_gold["gold"]["engine"] = "exact"  # its time would mix engine and dtype: not compared
    assert M.dtype_effect([uncached_gold]) is None
