"""The record schema: an input record ``{id, question, documents, answer}`` in, an output row out.

A row holds the citations, the per-source scores and the decision layer's verdicts, or, for a bad
record, ``error`` (``"ErrorType: message"``) and empty results. :class:`RecordAttributor` turns
records into rows with one :class:`~attribot_rag.Attributor`, loaded once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import AttribotError, BatchError, EmptyAnswerError, InputError
from ..spans import as_id, check_text
from .io import _error_text, _safe

REQUIRED_FIELDS = ("id", "question", "documents", "answer")


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _check_record(raw: Any) -> tuple[str, str, list, str]:
    """The record's (id, question, documents, answer), or an :class:`InputError` saying what is wrong."""
    if isinstance(raw, BaseException):
        raise raw
    if not isinstance(raw, Mapping):
        raise InputError(f"the record is a {type(raw).__name__}, not an object with {', '.join(REQUIRED_FIELDS)}")
    missing = [k for k in REQUIRED_FIELDS if k not in raw or (k != "answer" and raw[k] is None)]
    if missing:
        raise InputError(f"the record has no {', '.join(repr(k) for k in missing)}: every record needs "
                         f"{', '.join(REQUIRED_FIELDS)}")
    rid, question, docs, answer = (raw[k] for k in REQUIRED_FIELDS)
    rid = as_id(rid, "'id'")
    check_text(question, "'question'")
    if isinstance(docs, (str, bytes, Mapping)) or not hasattr(docs, "__iter__"):
        raise InputError(f"'documents' is a {type(docs).__name__}: use a list of strings or of {{'id', 'text'}} "
                         "objects")
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        raise EmptyAnswerError("the answer is empty: batch attributes logged answers and never generates one")
    check_text(answer, "'answer'")
    return rid, question, list(docs), answer


def _result_row(index: int, rid: str, result, top_k: int | None) -> dict:
    verdicts = result.decisions()  # the one decision layer: "supported" and "used" as everywhere else
    models = result.timing.get("models", {}).values()
    return {
        "index": index, "id": rid, "question": result.question, "answer": result.answer, "strategy": result.strategy,
        "supported": verdicts.supported,
        "citations": [
            {"rank": c.rank, "source_id": c.source_id, "sentence": c.sentence, "start": c.start, "end": c.end,
             "score": c.score, "share": c.share, "answer_sentences": c.answer_sentences}
            for c in result.citations(top_k=top_k)
        ],
        "sources": [{"id": r.id, "score": r.score, "share": r.share, "used": r.used}
                    for r in result.source_rows(decisions=verdicts)],
        "dropped_sources": [s.id for s in result.dropped_sources],
        "error": None,
        "timing": {"seconds": result.timing.get("total_seconds", 0.0),
                   "forward_passes": sum(int(m["forward_passes"]) for m in models),
                   "forward_tokens": sum(int(m["forward_tokens"]) for m in models)},
    }


def _error_row(index: int, raw: Any, strategy: str, exc: BaseException, seconds: float) -> dict:
    get = raw.get if isinstance(raw, Mapping) else (lambda _k: None)
    try:
        rid = as_id(get("id"), "id")
    except InputError:  # absent, or not an id: the row's index still names the record
        rid = None
    return _safe({
        "index": index, "id": rid,
        "question": _str_or_none(get("question")), "answer": _str_or_none(get("answer")), "strategy": strategy,
        "supported": None, "citations": [], "sources": [], "dropped_sources": [], "error": _error_text(exc),
        "timing": {"seconds": seconds, "forward_passes": 0, "forward_tokens": 0},
    })


class RecordAttributor:
    """Turns input records into output rows with one :class:`~attribot_rag.Attributor` (loaded once).

    Any failure of one record (bad fields, empty answer, prompt too long, out of memory, ...)
    becomes that record's error row. Only interrupts propagate, and a :class:`BatchError` once
    ``max_unexpected_in_a_row`` records in a row fail with errors that are not attribot-rag's own
    (a broken model or device would otherwise turn the rest of the job into error rows).
    """

    def __init__(self, target, proxy=None, *, strategy="auto", top_k: int | None = 5, device: str | None = None,
                 dtype=None, overflow: str = "error", max_unexpected_in_a_row: int = 10) -> None:
        from ..attributor import Attributor

        self.attributor = Attributor(target, proxy, strategy=strategy, device=device, dtype=dtype, overflow=overflow)
        self.top_k = top_k
        self.max_unexpected_in_a_row = max_unexpected_in_a_row
        self._unexpected = 0

    def row(self, index: int, raw: Any) -> dict:
        """The output row of one record."""
        started = time.perf_counter()
        try:
            rid, question, docs, answer = _check_record(raw)
            result = self.attributor.attribute(question, docs, answer)
        except AttribotError as exc:  # a bad record: its row says why
            self._unexpected = 0
            return _error_row(index, raw, self.attributor.strategy.name, exc, time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - one odd record must not stop the job...
            self._unexpected += 1
            if self._unexpected >= self.max_unexpected_in_a_row:  # ...but a broken model or device must
                raise BatchError(
                    f"{self._unexpected} records in a row failed with unexpected errors (last, record {index}: "
                    f"{_error_text(exc)}): the model or device looks broken; fix it and rerun the same command "
                    "to resume (the shard in progress is not written)"
                ) from exc
            return _error_row(index, raw, self.attributor.strategy.name, exc, time.perf_counter() - started)
        self._unexpected = 0
        return _result_row(index, rid, result, self.top_k)

    def rows(self, records: list[tuple[int, Any]]) -> Iterator[dict]:
        for index, raw in records:
            yield self.row(index, raw)
