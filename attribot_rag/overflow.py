"""Which sources to drop when a prompt is longer than a model's context window.

The overflow policies drop sources in a fixed order (``drop_last``: the last retrieved first;
``drop_lowest_score``: the lowest ``metadata["score"]`` first) until the prompt plus the answer
fits every model's window. Re-tokenizing the whole prompt after each dropped source made that
quadratic (5,000 tiny documents: minutes). Here each source's share of the prompt is estimated
once from its own tokens, the estimate jumps to a candidate, and a few exact encodings of the
whole prompt (a false-position search on the estimated costs) find the fewest sources to drop,
whatever the number of sources.
"""

from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from .errors import ContextTooLongError
from .spans import Source

OVERFLOW_POLICIES = ("error", "drop_last", "drop_lowest_score")
_ADVICE = ("pass fewer or shorter sources, a longer-context model, or let the lowest-ranked sources be dropped: "
           "overflow='drop_last' / 'drop_lowest_score' (command line: --overflow drop_last)")


def retrieval_score(source: Source) -> float:
    """``metadata["score"]`` as a float; ``-inf`` when absent, not a number, or NaN (dropped first)."""
    value = source.metadata.get("score")
    # numbers.Real covers numpy scalars (FAISS and most vector stores return np.float32).
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value):
        return float(value)
    return float("-inf")


def removal_order(sources: Sequence[Source], policy: str) -> list[int]:
    """Indices of ``sources`` in the order ``policy`` drops them (ties: the later source first)."""
    if policy == "drop_last":
        return list(range(len(sources) - 1, -1, -1))
    return sorted(range(len(sources)), key=lambda i: (retrieval_score(sources[i]), -i))


def fewest_to_drop(n: int, order: Sequence[int], costs: Sequence[float],
                   excess: Callable[[list[int]], int]) -> int:
    """The fewest ``m`` such that dropping ``order[:m]`` leaves a prompt that fits (``excess(kept) <= 0``).

    ``costs[i]`` estimates source ``i``'s tokens; ``excess`` measures exactly (tokens over the
    window; the kept indices come in input order). The estimate jumps to a first candidate; then a
    safeguarded false-position search (interpolating the measured excesses on the estimated costs,
    bisecting when that stalls) closes the bracket. Assumes dropping more never makes it longer.
    Raises :class:`ContextTooLongError` when even one source does not fit.
    """
    def kept(m: int) -> list[int]:
        gone = set(order[:m])
        return [i for i in range(n) if i not in gone]

    dropped_cost = [0.0]  # dropped_cost[m]: the estimated tokens of order[:m]
    for i in order:
        dropped_cost.append(dropped_cost[-1] + max(float(costs[i]), 1.0))

    def first_reaching(target: float, lo: int, hi: int) -> int:
        """The smallest m in [lo, hi] with dropped_cost[m] >= target (hi if none)."""
        return min(bisect.bisect_left(dropped_cost, target, lo, hi + 1), hi)

    failing, over = 0, excess(kept(0))
    if over <= 0:
        return 0
    while True:  # jump by the estimate until a candidate fits
        if failing >= n - 1:
            raise ContextTooLongError(f"even one source is too long ({over} tokens over the context window): "
                                      "shorten it, or use a longer-context model")
        m = first_reaching(dropped_cost[failing] + over, failing + 1, n - 1)
        e = excess(kept(m))
        if e <= 0:
            fitting, under = m, e
            break
        failing, over = m, e
    side = 0  # which end moved last (+1 fitting, -1 failing), to bisect when one end keeps moving
    while fitting - failing > 1:
        if side in (2, -2):  # false position stalls when one end sticks: bisect once
            m, side = (failing + fitting) // 2, 0
        else:
            span = dropped_cost[fitting] - dropped_cost[failing]
            target = dropped_cost[failing] + span * over / (over - under)
            m = max(failing + 1, min(first_reaching(target, failing + 1, fitting - 1), fitting - 1))
        e = excess(kept(m))
        if e <= 0:
            fitting, under, side = m, e, (side + 1 if side > 0 else 1)
        else:
            failing, over, side = m, e, (side - 1 if side < 0 else -1)
    return fitting


def fit_sources(scorers: Sequence[Any], question: str, history: tuple, srcs: list[Source], answer: str | None,
                max_new_tokens: int, policy: str, memo: dict) -> tuple[list[Source], list[Source]]:
    """Apply ``policy`` for ``scorers`` (the attributor's ``_Scorer`` objects: ``loaded``, ``builder``,
    ``strict``, ``name``); returns (kept sources in input order, dropped sources in the order dropped).

    The encoded answer and the kept sources' prompt are left in ``memo`` for scoring, as scoring expects.
    """
    windowed = [sc for sc in scorers if sc.loaded.context_window is not None]
    if not windowed:
        return list(srcs), []
    extra = {}
    for sc in windowed:
        if answer is None:
            extra[id(sc)] = max_new_tokens
        else:
            enc = memo.get(("answer", id(sc)))
            if enc is None:
                enc = memo[("answer", id(sc))] = sc.builder.encode_answer(answer, strict=sc.strict)
            extra[id(sc)] = len(enc.ids)
    prompts: dict[tuple[int, ...], dict[int, list[int]]] = {}
    problems: dict[tuple[int, ...], str] = {}

    def excess(kept: list[int]) -> int:
        key = tuple(kept)
        chosen = [srcs[i] for i in kept]
        worst, encoded = -math.inf, {}
        for sc in windowed:
            prompt = encoded[id(sc)] = sc.builder.encode_prompt(question, chosen, history=history)
            need, window = len(prompt) + extra[id(sc)], sc.loaded.context_window
            if need - window > worst:
                worst = need - window
                problems[key] = f"{need} tokens exceed {sc.name}'s context window of {window}"
        prompts[key] = encoded
        return int(worst)

    n = len(srcs)
    full = tuple(range(n))
    if excess(list(full)) <= 0:
        _remember(memo, windowed, prompts[full])
        return list(srcs), []
    if policy not in ("drop_last", "drop_lowest_score"):
        raise ContextTooLongError(f"prompt + answer: {problems[full]}. To fit, {_ADVICE}")
    order = removal_order(srcs, policy)
    costs = source_costs(windowed[0].builder, srcs)
    try:
        m = fewest_to_drop(n, order, costs, excess)
    except ContextTooLongError:
        raise ContextTooLongError(f"even one source is too long ({problems[(order[-1],)]}): shorten it, or use a "
                                  "longer-context model") from None
    gone = set(order[:m])
    kept = [i for i in range(n) if i not in gone]
    if tuple(kept) not in prompts:  # pragma: no cover - fewest_to_drop always measured its answer
        excess(kept)
    _remember(memo, windowed, prompts[tuple(kept)])
    return [srcs[i] for i in kept], [srcs[i] for i in order[:m]]


def _remember(memo: dict, scorers: Sequence[Any], encoded: dict[int, list[int]]) -> None:
    for sc in scorers:
        memo[("prompt", id(sc))] = encoded[id(sc)]


def source_costs(builder: Any, srcs: Sequence[Source]) -> list[float]:
    """Each source's tokens in the prompt, estimated from its own rendered block (one batched call)."""
    template = builder.template
    blocks = [template.document.format(index=i + 1, title=f" {s.title}" if s.title else "", text=s.rendered())
              + "\n\n" for i, s in enumerate(srcs)]
    try:
        ids = builder.tokenizer(blocks, add_special_tokens=False)["input_ids"]
        return [float(len(x)) for x in ids]
    except Exception:  # noqa: BLE001 - a tokenizer without batch calls: characters / 4 is a fine estimate
        return [len(b) / 4 for b in blocks]
