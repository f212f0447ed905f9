"""Which sources to drop when a prompt is longer than a model's context window.

The overflow policies drop sources in a fixed order (``drop_last``: the last retrieved first;
``drop_lowest_score``: the lowest ``metadata["score"]`` first) until the prompt plus the answer
fits every model's window. Re-tokenizing the whole prompt after each dropped source made that
quadratic (5,000 tiny documents: minutes). Here each source's share of the prompt is estimated
once from its own tokens, the estimate jumps to a candidate, and a few exact encodings of the
whole prompt (a bracket, then bisection) find the fewest sources to drop: about as many full
encodings as the logarithm of the estimate's error, whatever the number of sources.
"""

from __future__ import annotations

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
    window; the kept indices come in input order). Assumes dropping more never makes it longer.
    Raises :class:`ContextTooLongError` when even one source does not fit.
    """
    def kept(m: int) -> list[int]:
        gone = set(order[:m])
        return [i for i in range(n) if i not in gone]

    failing, over = 0, excess(kept(0))
    if over <= 0:
        return 0
    while True:  # jump by the estimate until a candidate fits
        m, acc = failing, 0.0
        while m < n - 1 and acc < over:
            acc += costs[order[m]]
            m += 1
        m = min(max(m, failing + 1), n - 1)
        if m == failing:  # already down to one source
            raise ContextTooLongError(f"even one source is too long ({over} tokens over the context window): "
                                      "shorten it, or use a longer-context model")
        e = excess(kept(m))
        if e <= 0:
            fitting = m
            break
        failing, over = m, e
    step = 1  # the estimate may overshoot: bracket from the fitting side, then bisect
    while fitting - failing > 1:
        probe = max(fitting - step, failing + 1)
        if excess(kept(probe)) <= 0:
            fitting, step = probe, step * 2
        else:
            failing = probe
            break
    while fitting - failing > 1:
        mid = (failing + fitting) // 2
        if excess(kept(mid)) <= 0:
            fitting = mid
        else:
            failing = mid
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
    blocks = [template.document.format(index=i + 1, title=f" {s.title}" if s.title else "", text=s.text.strip())
              + "\n\n" for i, s in enumerate(srcs)]
    try:
        ids = builder.tokenizer(blocks, add_special_tokens=False)["input_ids"]
        return [float(len(x)) for x in ids]
    except Exception:  # noqa: BLE001 - a tokenizer without batch calls: characters / 4 is a fine estimate
        return [len(b) / 4 for b in blocks]
