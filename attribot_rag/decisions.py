"""The one decision layer: every verdict a user sees comes from :class:`DecisionRule`.

Scores are measurements (nats of answer log-likelihood); verdicts are decisions taken on them:

* **supported** (the answer, and each answer sentence): the retrieved context raises the
  sentence's log-likelihood (``lift`` = all sources vs none) by more than ``min_lift`` nats and
  more than the noise bound. An unsupported sentence gets no citations and no markers; an
  unsupported answer uses no source.
* **used** (each source): the answer is supported and the source is evidence for it, by either
  signal: its leave-one-out score (removing it costs the answer likelihood) clears ``min_loo``,
  the noise bound and ``min_share`` of the positive LOO total, *or* its sufficiency (the answer's
  log-likelihood with that source alone vs none) clears ``min_sufficiency``, the noise bound and
  ``sufficiency_ratio`` of the best source's sufficiency. The second path finds evidence that
  another source repeats, which leave-one-out alone scores ~0.
* **cited** (a sentence citation, a ``[n]`` marker): a sentence of a used source whose LOO score
  clears ``min_citation`` and the noise bound, attached to the supported answer sentences it
  supports; a used source found by sufficiency alone marks the answer sentences it supports.

The CLI, HTML and terminal views, batch rows, LangChain and LlamaIndex all call
:meth:`AttributionResult.decisions`, which applies :data:`DEFAULT_RULE` unless given another
rule. The default thresholds were chosen on HotpotQA *train* (``python -m benchmarks.trust``)
and are reported on dev (``benchmarks/results/trust_*.json``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, is_count, is_finite_number

if TYPE_CHECKING:  # pragma: no cover
    from .result import AttributionResult, Citation, ContextSupport


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()
"""Default of optional threshold overrides: "use the rule's value" (``None`` is a value: it disables a check)."""


@dataclass(frozen=True)
class DecisionRule:
    """Thresholds of every verdict, in one place (see the module docstring for the rule itself).

    Args:
        min_lift: least context lift (nats) for an answer sentence to be supported (``None``: no
            support check, every answer counts as supported).
        support_from: ``"lift"`` (all sources vs none) or ``"best"`` (the larger of that and the best
            single source's sufficiency) as the support score compared with ``min_lift``.
        min_loo: least leave-one-out document score (nats) for "used" by leave-one-out.
        min_share: ... and least share of the positive document scores (``None``: no share rule).
        min_sufficiency: least sufficiency (nats) for "used" by sufficiency (``None``: LOO only).
        sufficiency_ratio: ... and least fraction of the best source's sufficiency.
        sufficiency_over: ``"none"`` (sufficiency as measured) or ``"median"`` (minus the median source's
            sufficiency: the part of a source's lift that the typical retrieved source does not give, so
            the generic effect of "any document at all" is not taken for evidence).
        min_citation: least sentence LOO score (nats) for a citation or a marker.
        noise_factor: every threshold is also at least ``noise_factor`` x the result's noise bound.
        mark_top_k / marks_per_sentence: markers come from the best ``mark_top_k`` citations, at
            most ``marks_per_sentence`` sources an answer sentence.
    """

    # Defaults: chosen on HotpotQA train by `python -m benchmarks.trust calibrate` (SmolLM2-135M, bf16;
    # benchmarks/results/trust_calibration_smollm2-135m.json), reported on dev (trust_smollm2-135m.json).
    min_lift: float | None = 3.0
    support_from: str = "best"
    min_loo: float = 1.0
    min_share: float | None = 0.15
    min_sufficiency: float | None = 2.0
    sufficiency_ratio: float = 0.5
    sufficiency_over: str = "median"
    min_citation: float = 0.25
    noise_factor: float = 1.0
    mark_top_k: int = 5
    marks_per_sentence: int = 3

    def __post_init__(self) -> None:
        for key in ("min_loo", "min_citation", "noise_factor", "sufficiency_ratio"):
            if not is_finite_number(getattr(self, key)):
                raise ConfigError(f"{key} must be a finite number, got {getattr(self, key)!r}")
        for key in ("min_lift", "min_sufficiency"):
            if getattr(self, key) is not None and not is_finite_number(getattr(self, key)):
                raise ConfigError(f"{key} must be a finite number or None, got {getattr(self, key)!r}")
        if self.min_share is not None and not (is_finite_number(self.min_share) and 0 <= self.min_share <= 1):
            raise ConfigError(f"min_share must be a number in [0, 1] or None, got {self.min_share!r}")
        if self.sufficiency_over not in ("none", "median"):
            raise ConfigError(f"sufficiency_over must be 'none' or 'median', got {self.sufficiency_over!r}")
        if self.support_from not in ("lift", "best"):
            raise ConfigError(f"support_from must be 'lift' or 'best', got {self.support_from!r}")
        if self.noise_factor < 0:
            raise ConfigError(f"noise_factor must be >= 0, got {self.noise_factor!r}")
        for key in ("mark_top_k", "marks_per_sentence"):
            if not is_count(getattr(self, key)):
                raise ConfigError(f"{key} must be an int >= 0, got {getattr(self, key)!r}")

    def with_options(self, **changes: Any) -> DecisionRule:
        """A copy with ``changes``; values left at :data:`UNSET` keep the rule's own (``None`` is a value)."""
        changes = {k: v for k, v in changes.items() if v is not UNSET}
        return replace(self, **changes) if changes else self

    def decide(self, result: AttributionResult) -> Decisions:
        """The verdicts for ``result``."""
        return _decide(self, result)


DEFAULT_RULE = DecisionRule()

LOO_ONLY_RULE = DecisionRule(min_loo=0.1, min_share=0.05, min_lift=None, min_sufficiency=None,
                             min_citation=0.1, noise_factor=0.0)
"""The rule of attribot-rag 0.1 (LOO > 0.1 nats and >= 5% share, no support or sufficiency check).

Kept as a baseline for the benchmark; not a recommended setting."""


@dataclass(frozen=True)
class AnswerSentenceVerdict:
    """One answer sentence: is it supported by the context, and by how much (``score``, nats)."""

    index: int
    text: str
    start: int
    end: int
    supported: bool | None
    score: float | None
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "text": self.text, "start": self.start, "end": self.end,
                "supported": self.supported, "score": self.score}


@dataclass(frozen=True)
class SourceVerdict:
    """One source: used or not, and by which evidence (``"leave-one-out"``, ``"sufficiency"``)."""

    index: int
    id: str
    used: bool
    loo: float
    share: float
    sufficiency: float | None
    evidence: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "used": self.used, "loo": self.loo, "share": self.share,
                "sufficiency": self.sufficiency, "evidence": list(self.evidence)}


@dataclass(frozen=True)
class Decisions:
    """Every verdict about one result, from one :class:`DecisionRule`.

    ``supported`` is ``None`` when the result carries no context-support scores (a result
    built by hand); the verdicts then rest on leave-one-out alone.
    """

    rule: DecisionRule
    supported: bool | None
    lift: float | None
    noise: float
    answer_sentences: list[AnswerSentenceVerdict]
    sources: list[SourceVerdict]
    citations: list[Citation]
    marks: dict[int, list[int]] = field(default_factory=dict)

    @property
    def used(self) -> list[bool]:
        """Per source, in retrieval order: did the answer use it."""
        return [s.used for s in self.sources]

    @property
    def cited_sources(self) -> list[int]:
        """Indices of the used sources, strongest evidence first (LOO score, then sufficiency)."""
        used = [s for s in self.sources if s.used]
        return [s.index for s in sorted(used, key=lambda s: (-_evidence(s), s.index))]

    def to_dict(self) -> dict[str, Any]:
        return {
            "supported": self.supported, "lift": self.lift, "noise": self.noise,
            "answer_sentences": [a.to_dict() for a in self.answer_sentences],
            "sources": [s.to_dict() for s in self.sources],
            "cited_sources": self.cited_sources,
        }


def _evidence(s: SourceVerdict) -> float:
    return max(s.loo, s.sufficiency if s.sufficiency is not None else -math.inf)


def _support_score(rule: DecisionRule, support: ContextSupport, j: int | None) -> float:
    """Context lift of answer sentence ``j`` (``None``: the whole answer); with ``support_from="best"``,
    the larger of it and the best single source's sufficiency (small models can read one source
    better than all of them at once)."""
    lift = support.lift[j] if j is not None else support.total_lift
    if rule.support_from == "lift" or not support.sufficiency:
        return float(lift)
    alone = [row[j] if j is not None else sum(row) for row in support.sufficiency]
    return float(max(lift, max(alone)))


def score_shares(scores: list[float]) -> list[float]:
    """Each score's share of the positive total (a negative score counts as 0; all 0 when none is positive):
    :meth:`~attribot_rag.result.AttributionResult.source_shares` and each :class:`SourceVerdict`'s ``share``."""
    total = sum(max(s, 0.0) for s in scores)
    return [max(s, 0.0) / total if total > 0 else 0.0 for s in scores]


def _excess(rule: DecisionRule, values: list[float]) -> list[float]:
    """Sufficiency as the rule reads it: as measured, or above the median source's."""
    if rule.sufficiency_over == "none" or not values:
        return values
    base = sorted(values)[(len(values) - 1) // 2]  # the lower median: a clear majority of distractors sets it
    return [v - base for v in values]


def _decide(rule: DecisionRule, result: AttributionResult) -> Decisions:
    noise = result.noise
    support = result.support
    n_ans = len(result.answer_sentences)
    tokens = support.answer_tokens if support is not None else [1] * n_ans
    total_tokens = max(sum(tokens), 1)

    def floor(n: int) -> float:  # no noise bound (a hand-built result, noise_factor=0): no floor
        return rule.noise_factor * noise.bound(n) if noise is not None and rule.noise_factor > 0 else -math.inf

    # Supported: per answer sentence, then the answer as a whole.
    check = support is not None and rule.min_lift is not None
    verdicts = []
    for j, s in enumerate(result.answer_sentences):
        thr = max(rule.min_lift, floor(tokens[j])) if rule.min_lift is not None else -math.inf
        score = _support_score(rule, support, j) if support is not None else None
        ok = bool(score > thr and tokens[j] > 0) if check else None
        verdicts.append(AnswerSentenceVerdict(j, s.text, s.start, s.end, ok, score, thr))
    lift = _support_score(rule, support, None) if support is not None else None
    supported = bool(lift > max(rule.min_lift, floor(total_tokens))) if check else None
    sentence_ok = [v.supported is not False for v in verdicts]

    # Used: leave-one-out or sufficiency evidence, only for a supported answer.
    shares = score_shares([d.score for d in result.document_scores])
    suff = support.document_sufficiency if support is not None else [None] * len(result.sources)
    excess = _excess(rule, suff) if support is not None else suff
    best_suff = max((x for x in excess if x is not None), default=0.0)
    loo_thr = max(rule.min_loo, floor(total_tokens))
    sources = []
    for i, (src, d, sh, sf, ex) in enumerate(zip(result.sources, result.document_scores, shares, suff, excess)):
        evidence = []
        if supported is not False:
            if d.scored and d.score > loo_thr and (rule.min_share is None or sh >= rule.min_share):
                evidence.append("leave-one-out")
            if (rule.min_sufficiency is not None and ex is not None
                    and ex > max(rule.min_sufficiency, floor(total_tokens))
                    and ex >= rule.sufficiency_ratio * best_suff):
                evidence.append("sufficiency")
        sources.append(SourceVerdict(i, src.id, bool(evidence), d.score, sh, sf, tuple(evidence)))

    # Cited: sentences of used sources above the citation threshold, for supported answer sentences.
    used = [s.used for s in sources]
    citations = []
    for c in result.citations(min_score=max(rule.min_citation, floor(total_tokens))):
        if not used[c.source_index]:
            continue
        keep = [j for j in c.answer_sentences if sentence_ok[j]]
        if c.answer_sentences and not keep:
            continue
        c.answer_sentences = keep
        c.rank = len(citations) + 1
        citations.append(c)

    marks: dict[int, list[int]] = {}

    def mark(j: int, source: int) -> None:
        nums = marks.setdefault(j, [])
        if source + 1 not in nums and len(nums) < rule.marks_per_sentence:
            nums.append(source + 1)

    for c in citations[: rule.mark_top_k]:
        for j in c.answer_sentences:
            mark(j, c.source_index)
    if support is not None and rule.min_sufficiency is not None:
        # A used source that alone supports a supported answer sentence marks it too: leave-one-out
        # cannot credit a sentence whose fact another source repeats.
        for j in range(n_ans):
            if not sentence_ok[j]:
                continue
            col = _excess(rule, [row[j] for row in support.sufficiency])
            best = max((col[s.index] for s in sources if s.used), default=0.0)
            for s in sorted((s for s in sources if s.used), key=lambda s: -col[s.index]):
                x = col[s.index]
                if x > max(rule.min_sufficiency, floor(tokens[j])) and x >= rule.sufficiency_ratio * best:
                    mark(j, s.index)
    marks = {j: v for j, v in marks.items() if v}
    return Decisions(rule, supported, lift, noise.bound(total_tokens) if noise is not None else 0.0, verdicts,
                     sources, citations, marks)
