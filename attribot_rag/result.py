"""Attribution results: per-source and per-sentence LOO scores, ranked citations, JSON."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .decisions import DEFAULT_RULE, UNSET, DecisionRule, Decisions, score_shares
from .errors import ConfigError, is_count
from .noise import Noise
from .spans import Sentence, Source

NOT_SCORED = "not scored"  # a span the strategy skipped (pruned / in a dropped document): score 0
_HTML_VIEWS: dict[str, int] = {}  # root element id -> times shown inline (`_repr_html_`) in this process


@dataclass
class SpanScore:
    """The LOO score of one span: the answer's log-likelihood drop (nats) when it is removed.

    ``answer_sentence_scores[j]`` is the drop restricted to the tokens of answer sentence ``j``
    (the same forward passes, summed per sentence). ``scored_by`` names the model that scored
    it, ``"sum of sentences"`` for a document score derived from its sentences, or
    ``"not scored"`` when the strategy skipped it (its score is then 0).
    """

    source_index: int
    sentence_index: int | None
    score: float
    answer_sentence_scores: list[float]
    scored_by: str

    @property
    def scored(self) -> bool:
        return self.scored_by != NOT_SCORED


@dataclass
class ContextSupport:
    """How much the retrieved context raises the answer's likelihood (nats, per answer sentence).

    ``lift[j]``: log-likelihood of answer sentence ``j``'s tokens with every source minus with no
    source at all. ``sufficiency[i][j]``: the same with source ``i`` alone minus with none; a
    source whose content another source repeats has a LOO score near 0 but keeps its
    sufficiency. ``answer_tokens[j]``: how many answer tokens sentence ``j`` has (noise bounds
    scale with it). Scored by ``scored_by`` (the target model).
    """

    lift: list[float]
    sufficiency: list[list[float]]
    answer_tokens: list[int]
    scored_by: str

    @property
    def total_lift(self) -> float:
        return float(sum(self.lift))

    @property
    def document_sufficiency(self) -> list[float]:
        """Each source's sufficiency summed over the answer."""
        return [float(sum(row)) for row in self.sufficiency]

    def to_dict(self) -> dict[str, Any]:
        return {"lift": list(self.lift), "total_lift": self.total_lift,
                "sufficiency": [list(r) for r in self.sufficiency], "answer_tokens": list(self.answer_tokens),
                "scored_by": self.scored_by}


@dataclass
class Citation:
    """A ranked sentence citation, with exact offsets into its source's text."""

    rank: int
    source_index: int
    source_id: str
    sentence_index: int
    sentence: str
    start: int
    end: int
    score: float
    share: float
    answer_sentences: list[int]
    scored_by: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # not dataclasses.asdict: it deep-copies metadata, which fails on locks, generators, handles
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["answer_sentences"], d["metadata"] = list(self.answer_sentences), dict(self.metadata)
        return d


@dataclass(frozen=True)
class SourceRow:
    """One retrieved source with its scores and the decision layer's verdicts (see
    :meth:`AttributionResult.source_rows`).

    ``index``: position in ``result.sources`` (retrieval order, after any overflow drop); ``rank``:
    1-based position when the sources are ranked by ``score`` (highest first, ties in retrieval
    order); ``score``: the leave-one-out document score (nats); ``share``: of the positive document
    scores; ``used`` / ``evidence`` / ``sufficiency``: the rule's verdict and why
    (:class:`~attribot_rag.decisions.SourceVerdict`); ``sentences``: the sentence scores.
    """

    index: int
    id: str
    title: str | None
    text: str
    metadata: dict[str, Any]
    score: float
    share: float
    used: bool
    evidence: tuple[str, ...]
    sufficiency: float | None
    rank: int
    scored_by: str
    answer_sentence_scores: list[float]
    sentences: list[SpanScore]

    @property
    def scored(self) -> bool:
        """Whether the strategy scored the source (a skipped one scores 0)."""
        return self.scored_by != NOT_SCORED

    def to_dict(self) -> dict[str, Any]:
        """The row as :meth:`AttributionResult.to_dict` writes it (no text, no metadata)."""
        return {
            "id": self.id, "index": self.index, "rank": self.rank, "title": self.title, "score": self.score,
            "share": self.share, "used": self.used, "evidence": list(self.evidence), "sufficiency": self.sufficiency,
            "scored_by": self.scored_by, "answer_sentence_scores": list(self.answer_sentence_scores),
            "sentences": [{"index": s.sentence_index, "score": s.score, "scored_by": s.scored_by}
                          for s in self.sentences],
        }


def jsonable(value: Any) -> Any:
    """``value`` made strict JSON: NaN/inf -> None, numpy numbers and arrays -> numbers and lists,
    mapping keys -> str, anything else -> its ``str`` (metadata can hold anything)."""
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else str(jsonable(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Real) or hasattr(value, "tolist"):
        value = _json_default(value)
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if isinstance(value, (bool, int, str, list)):
            return jsonable(value) if isinstance(value, list) else value
        # .tolist() of numpy datetimes, complex numbers and bytes gives objects JSON cannot hold
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if hasattr(value, "tolist"):  # numpy arrays
        return value.tolist()
    return str(value)


def _supports(scores: list[float], ratio: float = 0.25) -> list[int]:
    """Answer sentences a span supports: positive drops within ``ratio`` of its largest one."""
    top = max(scores, default=0.0)
    return [j for j, s in enumerate(scores) if s > 0 and s >= ratio * top]


@dataclass
class AttributionResult:
    """What attribution found for one answer.

    ``document_scores[i]`` scores source ``i``; ``sentence_scores[i][k]`` scores sentence ``k``
    of source ``i``. Scores are in nats of answer log-likelihood; positive = the answer relies
    on the span. ``timing`` holds wall seconds and each model's forward work. ``history`` is
    the earlier chat turns the answer was scored in (``[{"role", "content"}, ...]``; context,
    never ablated).
    """

    question: str
    answer: str
    sources: list[Source]
    answer_sentences: list[Sentence]
    document_scores: list[SpanScore]
    sentence_scores: list[list[SpanScore]]
    strategy: str
    timing: dict[str, Any] = field(default_factory=dict)
    dropped_sources: list[Source] = field(default_factory=list)
    history: list[dict[str, str]] = field(default_factory=list)
    support: ContextSupport | None = None
    noise: Noise | None = None

    def decisions(self, rule: DecisionRule | None = None) -> Decisions:
        """Every verdict (supported, used, cited, ``[n]`` markers) from one rule (:data:`DEFAULT_RULE`)."""
        return (rule or DEFAULT_RULE).decide(self)

    @property
    def supported(self) -> bool | None:
        """Does the retrieved context support the answer (see :mod:`attribot_rag.decisions`)."""
        return self.decisions().supported

    def citations(self, top_k: int | None = None, min_score: float = 0.0) -> list[Citation]:
        """Sentences ranked by score (highest first), those scoring above ``min_score``.

        ``share`` is a sentence's share of the total positive sentence score.
        """
        if top_k is not None and not is_count(top_k):
            raise ConfigError(f"top_k={top_k!r}: pass a count >= 0, or None for every citation")
        flat = [s for per_doc in self.sentence_scores for s in per_doc]
        shares = dict(zip(map(id, flat), score_shares([s.score for s in flat])))
        ranked = sorted(
            (s for s in flat if s.scored and s.score > min_score),
            key=lambda s: (-s.score, s.source_index, s.sentence_index),
        )
        out = []
        for rank, s in enumerate(ranked[: int(top_k)] if top_k is not None else ranked, start=1):
            src = self.sources[s.source_index]
            sent = src.sentences[s.sentence_index]
            out.append(
                Citation(
                    rank=rank, source_index=s.source_index, source_id=src.id,
                    sentence_index=s.sentence_index, sentence=sent.text,
                    start=sent.start, end=sent.end, score=s.score, share=shares[id(s)],
                    answer_sentences=_supports(s.answer_sentence_scores), scored_by=s.scored_by,
                    metadata=dict(src.metadata),
                )
            )
        return out

    def source_rows(self, rule: DecisionRule | None = None, *, decisions: Decisions | None = None) -> list[SourceRow]:
        """One :class:`SourceRow` per source, in retrieval order: its scores and the verdicts of
        ``rule`` (:data:`DEFAULT_RULE`), or of ``decisions`` already taken on this result (so a view
        that also lists citations or markers decides once)."""
        verdicts = decisions if decisions is not None else self.decisions(rule)
        order = sorted(range(len(self.sources)), key=lambda i: (-self.document_scores[i].score, i))
        rank = {i: r for r, i in enumerate(order, start=1)}
        return [
            SourceRow(
                index=i, id=src.id, title=src.title, text=src.text, metadata=dict(src.metadata), score=d.score,
                share=v.share, used=v.used, evidence=tuple(v.evidence), sufficiency=v.sufficiency, rank=rank[i],
                scored_by=d.scored_by, answer_sentence_scores=list(d.answer_sentence_scores),
                sentences=list(self.sentence_scores[i]),
            )
            for i, (src, d, v) in enumerate(zip(self.sources, self.document_scores, verdicts.sources))
        ]

    def source_shares(self) -> list[float]:
        """Each source's share of the total positive document score."""
        return score_shares([d.score for d in self.document_scores])

    def used_mask(self, min_score: float = UNSET, min_share: float | None = UNSET, *,
                  rule: DecisionRule | None = None) -> list[bool]:
        """Which sources the answer used, per the decision rule (:mod:`attribot_rag.decisions`).

        ``min_score`` / ``min_share`` override the rule's ``min_loo`` / ``min_share`` (``min_share=None``:
        no share rule)."""
        return self.decisions((rule or DEFAULT_RULE).with_options(min_loo=min_score, min_share=min_share)).used

    def used_sources(self, min_score: float = UNSET, min_share: float | None = UNSET, *,
                     rule: DecisionRule | None = None) -> list[Source]:
        """The retrieved sources the answer used (see :meth:`used_mask`), in retrieval order."""
        return [s for s, used in zip(self.sources, self.used_mask(min_score, min_share, rule=rule)) if used]

    def answer_marks(self, top_k: int = UNSET, per_sentence: int = UNSET, min_score: float = UNSET, *,
                     rule: DecisionRule | None = None) -> dict[int, list[int]]:
        """``{answer sentence index: [1-based source numbers]}``: the decision rule's ``[n]`` markers.

        Only used sources mark, only supported answer sentences are marked; ``top_k``,
        ``per_sentence`` and ``min_score`` override the rule's ``mark_top_k``, ``marks_per_sentence``
        and ``min_citation``.
        """
        rule = (rule or DEFAULT_RULE).with_options(mark_top_k=top_k, marks_per_sentence=per_sentence,
                                                   min_citation=min_score)
        return self.decisions(rule).marks

    def marked_answer(self, top_k: int = UNSET, per_sentence: int = UNSET, min_score: float = UNSET, *,
                      rule: DecisionRule | None = None) -> str:
        """The answer with ``[n]`` markers (n = 1-based source number) after each sentence (:meth:`answer_marks`)."""
        return self._with_marks(self.answer_marks(top_k, per_sentence, min_score, rule=rule))

    def _with_marks(self, marks: dict[int, list[int]]) -> str:
        out, pos = [], 0
        for j, s in enumerate(self.answer_sentences):
            out.append(self.answer[pos : s.end])
            out.append("".join(f"[{n}]" for n in sorted(marks.get(j, []))))
            pos = s.end
        out.append(self.answer[pos:])
        return "".join(out)

    def to_dict(self, top_k: int | None = None) -> dict[str, Any]:
        """A strict-JSON-ready dict (see :meth:`to_json` for how odd metadata is written): ``answer``,
        ``supported``, ``citations``, ``cited``, ``sources`` (:meth:`source_rows`), ``answer_sentences``,
        ``noise``, ``timing``."""
        verdicts = self.decisions()
        return jsonable({
            "question": self.question,
            "answer": self.answer,
            "strategy": self.strategy,
            "supported": verdicts.supported,
            "citations": [c.to_dict() for c in self.citations(top_k=top_k)],
            "sources": [row.to_dict() for row in self.source_rows(decisions=verdicts)],
            "answer_sentences": [v.to_dict() for v in verdicts.answer_sentences],
            "cited": [c.to_dict() for c in verdicts.citations[: top_k if top_k is not None else None]],
            "marked_answer": self._with_marks(verdicts.marks),  # the same verdicts, not decided again
            "noise": None if self.noise is None else {**self.noise.to_dict(), "bound": verdicts.noise},
            "support": None if self.support is None else self.support.to_dict(),
            "dropped_sources": [s.id for s in self.dropped_sources],
            "history": [dict(m) for m in self.history],
            "timing": self.timing,
        })

    def to_json(self, top_k: int | None = None, **kwargs: Any) -> str:
        """:meth:`to_dict` as strict JSON (``kwargs`` go to ``json.dumps``). Metadata values JSON
        cannot hold are written as numbers when they are numbers (numpy scalars and arrays), NaN and
        infinities as ``null``, anything else (and non-string keys) as its ``str``."""
        kwargs.setdefault("allow_nan", False)
        return json.dumps(self.to_dict(top_k=top_k), **kwargs)

    # Visual citations (see :mod:`attribot_rag.render`).
    def to_html(self, **kwargs: Any) -> str:
        """Self-contained HTML: the marked answer and the sources highlighted by score (:func:`render.to_html`)."""
        from .render import to_html

        return to_html(self, **kwargs)

    def save_html(self, path: str | Path, **kwargs: Any) -> Path:
        """Write the HTML view as a standalone page (:func:`render.save_html`); returns the path."""
        from .render import save_html

        return save_html(self, path, **kwargs)

    def _repr_html_(self) -> str:  # Jupyter shows the HTML view inline
        # A notebook may show this (or an identical) result twice. Each view needs its own root id, or the
        # second view's script finds the first view's element and the second picker does nothing.
        from .render import _element_id

        base = _element_id(self)
        n = _HTML_VIEWS[base] = _HTML_VIEWS.get(base, 0) + 1
        return self.to_html(element_id=base if n == 1 else f"{base}-{n}")
