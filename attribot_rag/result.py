"""Attribution results: per-source and per-sentence LOO scores, ranked citations, JSON."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError, is_count
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


def _shares(scores: list[float]) -> list[float]:
    total = sum(max(s, 0.0) for s in scores)
    return [max(s, 0.0) / total if total > 0 else 0.0 for s in scores]


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

    def citations(self, top_k: int | None = None, min_score: float = 0.0) -> list[Citation]:
        """Sentences ranked by score (highest first), those scoring above ``min_score``.

        ``share`` is a sentence's share of the total positive sentence score.
        """
        if top_k is not None and not is_count(top_k):
            raise ConfigError(f"top_k={top_k!r}: pass a count >= 0, or None for every citation")
        flat = [s for per_doc in self.sentence_scores for s in per_doc]
        shares = dict(zip(map(id, flat), _shares([s.score for s in flat])))
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

    def source_shares(self) -> list[float]:
        """Each source's share of the total positive document score."""
        return _shares([d.score for d in self.document_scores])

    def used_mask(self, min_score: float = 0.1, min_share: float | None = 0.05) -> list[bool]:
        """Which sources the answer used: document score above ``min_score`` nats and at least
        ``min_share`` of the total positive document score (``None`` disables the share rule).

        The share rule matters for long answers: summed over many tokens, even an unrelated
        document's removal shifts the likelihood by more than a fixed threshold."""
        shares = self.source_shares()
        return [
            d.score > min_score and (min_share is None or sh >= min_share)
            for d, sh in zip(self.document_scores, shares)
        ]

    def used_sources(self, min_score: float = 0.1, min_share: float | None = 0.05) -> list[Source]:
        """The retrieved sources the answer used (see :meth:`used_mask`), in retrieval order."""
        return [s for s, used in zip(self.sources, self.used_mask(min_score, min_share)) if used]

    def answer_marks(self, top_k: int = 5, per_sentence: int = 3, min_score: float = 0.1) -> dict[int, list[int]]:
        """``{answer sentence index: [1-based source numbers]}`` from the ``top_k`` citations
        that support each sentence, at most ``per_sentence`` sources a sentence.

        Citations scoring ``min_score`` nats or less make no marker: a drop that small is within
        the noise of reduced-precision scoring, and a marker claims the answer used the source. For
        the same reason only sources :meth:`used_mask` (default thresholds) counts as used get markers.
        """
        marks: dict[int, list[int]] = {}
        used = self.used_mask()
        for c in self.citations(top_k=top_k, min_score=min_score):
            if not used[c.source_index]:  # a marker must not name a source this result reports unused
                continue
            for j in c.answer_sentences:
                nums = marks.setdefault(j, [])
                if c.source_index + 1 not in nums and len(nums) < per_sentence:
                    nums.append(c.source_index + 1)
        return marks

    def marked_answer(self, top_k: int = 5, per_sentence: int = 3, min_score: float = 0.1) -> str:
        """The answer with ``[n]`` markers (n = 1-based source number) after each sentence,
        from the ``top_k`` citations above ``min_score`` nats that support it."""
        marks = self.answer_marks(top_k, per_sentence, min_score)
        out, pos = [], 0
        for j, s in enumerate(self.answer_sentences):
            out.append(self.answer[pos : s.end])
            out.append("".join(f"[{n}]" for n in sorted(marks.get(j, []))))
            pos = s.end
        out.append(self.answer[pos:])
        return "".join(out)

    def to_dict(self, top_k: int | None = None) -> dict[str, Any]:
        """A JSON-ready dict: ``answer``, ``citations``, ``sources``, ``answer_sentences``, ``timing``."""
        used = self.used_mask()
        shares = self.source_shares()
        return {
            "question": self.question,
            "answer": self.answer,
            "strategy": self.strategy,
            "citations": [c.to_dict() for c in self.citations(top_k=top_k)],
            "sources": [
                {
                    "id": src.id, "index": i, "score": d.score, "share": sh, "used": u,
                    "scored_by": d.scored_by, "answer_sentence_scores": d.answer_sentence_scores,
                    "sentences": [
                        {"index": s.sentence_index, "score": s.score, "scored_by": s.scored_by}
                        for s in self.sentence_scores[i]
                    ],
                }
                for i, (src, d, sh, u) in enumerate(zip(self.sources, self.document_scores, shares, used))
            ],
            "answer_sentences": [{"index": s.index, "start": s.start, "end": s.end, "text": s.text}
                                 for s in self.answer_sentences],
            "dropped_sources": [s.id for s in self.dropped_sources],
            "history": [dict(m) for m in self.history],
            "timing": self.timing,
        }

    def to_json(self, top_k: int | None = None, **kwargs: Any) -> str:
        """:meth:`to_dict` as strict JSON (``kwargs`` go to ``json.dumps``). Metadata values JSON
        cannot hold are written as numbers when they are numbers (numpy scalars and arrays), NaN and
        infinities as ``null``, anything else (and non-string keys) as its ``str``."""
        kwargs.setdefault("allow_nan", False)
        return json.dumps(jsonable(self.to_dict(top_k=top_k)), **kwargs)

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
