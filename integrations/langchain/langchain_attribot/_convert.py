"""LangChain objects -> attribot-rag inputs, and attribution results -> LangChain shapes.

Nothing here scores anything: the core :class:`~attribot_rag.Attributor` does. This module
reads the question, ``Document``\\ s and answer out of a chain's values, and turns an
:class:`~attribot_rag.AttributionResult` into JSON-ready citation dicts, annotated
``Document`` copies and an ``AIMessage`` carrying LangChain's standard citation annotations.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from attribot_rag import AttributionResult, Attributor, ConfigError, EmptyAnswerError, NoSourcesError, Source
from attribot_rag.decisions import DEFAULT_RULE, UNSET, DecisionRule, Decisions
from attribot_rag.errors import is_count, is_finite_number
from attribot_rag.result import jsonable
from langchain_core.documents import Document
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ToolMessage,
    convert_to_messages,
    convert_to_openai_messages,
    message_chunk_to_message,
)

from .errors import ChainInputError, DocumentIdError

QUESTION_KEYS = ("question", "input", "query")
DOCUMENTS_KEYS = ("context", "documents", "docs", "source_documents")
ANSWER_KEYS = ("answer", "output", "result", "response")
HISTORY_KEYS = ("chat_history", "history")
MESSAGES_KEYS = ("messages",)  # a conversation's message list (an agent's state): its tools' documents are citable
_TURN_ROLES = ("user", "assistant")
_SKIPPED_ROLES = ("system", "developer", "tool", "function")  # instructions and tool traffic, not turns

SCORE_KEY = "attribot_score"  # added to the metadata of the documents in ``used_context``
SHARE_KEY = "attribot_share"


@dataclass(frozen=True)
class CiteOptions:
    """What to report: citation cut-offs and the decision rule behind every verdict.

    Which documents count as used, whether the context supports the answer, and which sentence
    citations survive all come from one core :class:`~attribot_rag.decisions.DecisionRule`
    (:data:`~attribot_rag.decisions.DEFAULT_RULE` unless ``rule`` is given); this package adds
    no thresholds of its own.

    Args:
        top_k: keep the ``top_k`` best citations (``None`` = every citation the rule keeps).
        min_score: an extra cut-off on top of the rule: keep citations scoring above this (nats).
        used_min_score: override of the rule's ``min_loo`` (least leave-one-out score, nats, for
            "used" by leave-one-out); :data:`~attribot_rag.decisions.UNSET` keeps the rule's value.
        used_min_share: override of the rule's ``min_share`` (``None`` disables the share check;
            ``UNSET`` keeps the rule's value).
        id_key: metadata key read as the document id when ``Document.id`` is ``None``.
        rule: the whole decision rule (``None``: the core's ``DEFAULT_RULE``); the two
            overrides above apply on top of it.
    """

    top_k: int | None = 5
    min_score: float = 0.0
    used_min_score: float = UNSET
    used_min_share: float | None = UNSET
    id_key: str | None = None
    rule: DecisionRule | None = None

    def __post_init__(self) -> None:
        if self.top_k is not None and not is_count(self.top_k):
            raise ConfigError(f"top_k={self.top_k!r}: pass a count >= 0, or None for every positive citation")
        # NaN compares False with everything, so a NaN threshold would silently keep or drop everything.
        checks = [("min_score", self.min_score)]
        if self.used_min_score is not UNSET:
            checks.append(("used-score threshold (used_min_score / min_score)", self.used_min_score))
        for name, value in checks:
            if not is_finite_number(value):
                raise ConfigError(f"the {name} is {value!r}: pass a finite number of nats (e.g. 0.0)")
        if self.id_key is not None and not isinstance(self.id_key, str):
            raise ConfigError(f"id_key={self.id_key!r}: pass the metadata key (a str) holding document ids, or None")
        share = self.used_min_share
        if share is not UNSET and share is not None and not (is_finite_number(share) and 0 <= share <= 1):
            raise ConfigError(f"the used-share threshold (used_min_share / min_share) is {share!r}: "
                              "pass a share in [0, 1], or None to disable the share rule")
        if self.rule is not None and not isinstance(self.rule, DecisionRule):
            raise ConfigError(f"rule={type(self.rule).__name__}: pass an attribot_rag.decisions.DecisionRule, "
                              "or None for the core's default rule")

    def resolved_rule(self) -> DecisionRule:
        """The decision rule in force: ``rule`` (else the core's ``DEFAULT_RULE``) with the overrides.

        With no override it *is* that rule object (``CiteOptions().resolved_rule() is DEFAULT_RULE``).
        """
        base = self.rule if self.rule is not None else DEFAULT_RULE
        return base.with_options(min_loo=self.used_min_score, min_share=self.used_min_share)


def call_options(options: CiteOptions, kwargs: Mapping[str, Any], names: Mapping[str, str], who: str) -> CiteOptions:
    """``options`` with the per-call overrides in ``kwargs`` (from ``invoke(..., **kwargs)`` or ``.bind``).

    ``names`` maps each accepted keyword to its :class:`CiteOptions` field. Other keywords are
    ignored, as LangChain's own steps (prompts, parsers, ``RunnableParallel``) ignore keywords they
    do not take, with a warning so that a misspelt option does not pass unnoticed. Overrides are
    checked like constructor arguments (:class:`ConfigError`), before any model work.
    """
    if not kwargs:
        return options
    unknown = sorted(k for k in kwargs if k not in names)
    if unknown:
        warnings.warn(f"{who} ignores the keyword argument(s) {unknown}: per call it takes "
                      f"{', '.join(names)}", UserWarning, stacklevel=4)  # the caller of invoke()
    known = {names[k]: v for k, v in kwargs.items() if k in names}
    return replace(options, **known) if known else options


@dataclass
class Cited:
    """The outcome of citing one answer, in LangChain shapes."""

    result: AttributionResult
    citations: list[dict[str, Any]]
    used_context: list[Document]
    cited_answer: AIMessage | None
    summary: dict[str, Any]


# ---------------------------------------------------------------------------------------- reading
def pick_key(values: Mapping[str, Any], key: str | None, candidates: Sequence[str], what: str) -> str:
    """The key holding ``what``: ``key`` when given, else the first of ``candidates`` present."""
    if key is not None:
        if key not in values:
            raise ChainInputError(
                f"the chain output has no {key!r} key for the {what} (keys: {sorted(map(str, values))}): "
                f"pass {what.split()[0]}_key=... naming the key that holds it"
            )
        return key
    for k in candidates:
        if k in values:
            return k
    raise ChainInputError(
        f"the chain output has no {what} (looked for {', '.join(map(repr, candidates))}; keys: "
        f"{sorted(map(str, values))}): keep it in the dict passed to the citation step "
        f"(e.g. RunnablePassthrough.assign(...)) or pass {what.split()[0]}_key=..."
    )


def question_text(value: Any, key: str = "question") -> str:
    """The question as text (a ``str`` or a message)."""
    if isinstance(value, BaseMessage):
        value = value.text
    if not isinstance(value, str):
        raise ChainInputError(f"{key!r} is a {type(value).__name__}; the question must be a str or a message")
    if not value.strip():
        raise ChainInputError(f"the question ({key!r}) is empty: pass the user's question text")
    return value


def answer_text(answer: Any, key: str = "answer") -> str:
    """The answer text of a ``str`` or a message (``message.text``: its text blocks joined)."""
    if isinstance(answer, BaseMessage):
        text = answer.text
        if not text.strip():
            raise EmptyAnswerError(
                f"the answer message ({key!r}) has no text (only tool calls or non-text blocks?): "
                "cite the final text answer"
            )
        return str(text)
    if isinstance(answer, str):
        if not answer.strip():
            raise EmptyAnswerError(f"the answer ({key!r}) is empty: the model produced no text to cite")
        return answer
    raise ChainInputError(
        f"{key!r} is a {type(answer).__name__}; the answer must be a str or an AIMessage "
        "(put the chat model's output, or StrOutputParser's, under that key)"
    )


def history_messages(value: Any, key: str = "chat_history") -> list[dict[str, str]]:
    """Earlier turns as ``{"role", "content"}`` dicts (OpenAI roles ``user``/``assistant``).

    Anything ``langchain_core.messages.convert_to_messages`` takes (messages, ``(role, text)``
    pairs, ``{"role", "content"}`` dicts, strings) is converted by langchain-core's own
    ``convert_to_openai_messages`` (text blocks joined). System, developer, tool and function
    messages are left out (instructions and tool traffic, not turns of the conversation the answer
    continues); so is a message without text (an AI message holding only tool calls).
    """
    if value is None:
        return []
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise ChainInputError(f"{key!r} is a {type(value).__name__}; chat history must be a list of messages")
    out = []
    for i, m in enumerate(value):
        try:
            (message,) = convert_to_messages([m])
            (converted,) = convert_to_openai_messages([message], text_format="string")
        except (ValueError, TypeError, NotImplementedError) as exc:
            raise ChainInputError(f"{key!r}[{i}] is not a chat message ({exc}): pass messages, "
                                  "{'role', 'content'} dicts or (role, text) pairs") from exc
        role, content = converted.get("role"), converted.get("content")
        if role in _SKIPPED_ROLES:
            continue
        if role not in _TURN_ROLES:
            raise ChainInputError(f"{key!r}[{i}] has role {role!r}: use human/ai (user/assistant) messages")
        if isinstance(content, str) and content.strip():
            out.append({"role": role, "content": content})
    return out


def tool_documents(values: Any, keys: Sequence[str] = ()) -> list[Document]:
    """The ``Document``\\ s tools returned: the ``artifact`` of every ``ToolMessage`` in the chain's message
    lists (under ``keys``, ``messages``, ``chat_history`` or ``history``), in message order.

    A tool built with ``response_format="content_and_artifact"`` returns its text for the model and
    its documents as the artifact; those documents are citable like retrieved ones. An artifact
    that is not a ``Document`` (or a list of them) is not a source and is skipped.
    """
    if not isinstance(values, Mapping):
        return []
    out: list[Document] = []
    for key in dict.fromkeys([*keys, *MESSAGES_KEYS, *HISTORY_KEYS]):
        messages = values.get(key)
        if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
            continue
        for m in messages:
            if not isinstance(m, ToolMessage):
                continue
            artifact = m.artifact
            items = [artifact] if isinstance(artifact, Document) else artifact if isinstance(
                artifact, (list, tuple)) else []
            out += [d for d in items if isinstance(d, Document)]
    return out


def conversation(values: Any) -> tuple[str, BaseMessage, list[dict[str, str]]] | None:
    """An agent's state: ``values["messages"]`` ending in a text answer -> ``(question, answer, history)``:
    the last human message before the last AI message with text, that AI message, and the turns
    before the question (``None``: no such list, or no such pair in it)."""
    messages = values.get("messages") if isinstance(values, Mapping) else None
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        return None
    messages = list(messages)
    ai = next((i for i in range(len(messages) - 1, -1, -1) if isinstance(messages[i], AIMessage)
               and messages[i].text.strip()), None)
    if ai is None:
        return None
    human = next((i for i in range(ai - 1, -1, -1) if isinstance(messages[i], BaseMessage)
                  and messages[i].type == "human"), None)
    if human is None:
        return None
    return question_text(messages[human], "messages"), messages[ai], history_messages(messages[:human], "messages")


def merge_documents(retrieved: Sequence[Document], found: Sequence[Document]) -> list[Document]:
    """``retrieved`` then the documents in ``found`` not already among them (same id, or the same
    content when there is no id): a document both retrieved and returned by a tool is one source."""
    out = list(retrieved)
    seen = {d.id if d.id is not None else ("", d.page_content) for d in out}
    for d in found:
        key = d.id if d.id is not None else ("", d.page_content)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def check_history_messages(n: int | None) -> int | None:
    """Validate a ``history_messages`` option (``None``: keep every history message)."""
    if n is not None and not is_count(n):
        raise ConfigError(f"history_messages must be None or an int >= 0, got {n!r}")
    return n


def chain_history(values: Any, key: str | None = None, keep: int | None = None) -> list[dict[str, str]]:
    """The earlier chat turns in a chain's dict: under ``key``, else ``chat_history`` or ``history``
    when present (none: ``[]``); only the latest ``keep`` messages when ``keep`` is set."""
    if key is not None and (not isinstance(values, Mapping) or key not in values):
        keys = sorted(map(str, values)) if isinstance(values, Mapping) else type(values).__name__
        raise ChainInputError(f"the chain's input has no {key!r} key for the chat history (keys: {keys})")
    if not isinstance(values, Mapping):
        return []
    hk = key or next((k for k in HISTORY_KEYS if k in values), None)
    history = history_messages(values.get(hk), hk) if hk else []
    if keep is not None:
        history = history[-keep:] if keep else []
    return history


def check_documents(value: Any, key: str = "context") -> list[Document]:
    """The retrieved documents: a non-empty list of ``Document`` objects."""
    if isinstance(value, str):
        raise ChainInputError(
            f"{key!r} is a str, not the retrieved Documents: keep the Document list in the chain's dict "
            "(format it into the prompt inside the prompt step instead)"
        )
    if isinstance(value, Document):
        value = [value]
    if not isinstance(value, Sequence):
        raise ChainInputError(f"{key!r} is a {type(value).__name__}; expected a list of Document")
    docs = list(value)
    if not docs:
        raise NoSourcesError(f"no documents to cite ({key!r} is empty): the retriever returned nothing")
    for i, d in enumerate(docs):
        if not isinstance(d, Document):
            raise ChainInputError(f"{key!r}[{i}] is a {type(d).__name__}; expected a langchain Document")
    return docs


def document_ids(documents: Sequence[Document], id_key: str | None = None) -> list[str]:
    """Each document's id: ``Document.id``, else ``metadata[id_key]``; missing or duplicate -> error."""
    ids: list[str] = []
    for i, d in enumerate(documents):
        doc_id = d.id
        if doc_id is None and id_key is not None:
            doc_id = d.metadata.get(id_key)
        if doc_id is None or str(doc_id) == "":
            hint = f" nor metadata[{id_key!r}]" if id_key else ""
            raise DocumentIdError(
                f"document {i} has no id{hint} (page_content starts {d.page_content[:40]!r}): citations name "
                "documents by id. Give documents ids (Document(id=...), or add_documents(..., ids=...) to "
                "the vector store), or pass id_key='source' (any metadata key) to read the id from metadata"
            )
        ids.append(str(doc_id))
    seen: dict[str, int] = {}
    for i, doc_id in enumerate(ids):
        if doc_id in seen:
            raise DocumentIdError(
                f"documents {seen[doc_id]} and {i} share the id {doc_id!r}: de-duplicate the retrieved "
                "documents (e.g. when merging several retrievers) so each citation names one document"
            )
        seen[doc_id] = i
    return ids


def to_sources(documents: Sequence[Document], id_key: str | None = None) -> list[Source]:
    """Core sources: id, ``page_content`` (offsets index it), JSON-safe metadata (``title`` is shown)."""
    ids = document_ids(documents, id_key)
    return [Source(id=i, text=d.page_content, metadata=jsonable(dict(d.metadata))) for i, d in zip(ids, documents)]


# ---------------------------------------------------------------------------------------- computing
def cite(
    attributor: Attributor,
    question: str,
    documents: Sequence[Document],
    answer: str | BaseMessage,
    options: CiteOptions,
    history: Sequence[Mapping[str, str]] = (),
) -> Cited:
    """Attribute ``answer`` to ``documents`` and convert the result (blocking: run it off the event loop).

    ``history``: earlier turns (see :func:`history_messages`), scored as context, never cited.
    """
    text = answer_text(answer)
    sources = to_sources(documents, options.id_key)
    result = attributor.attribute(question, sources, text, history=list(history))  # holds the models' locks
    # The core may drop sources to fit the context window (``overflow=``): its result then lists
    # only the kept ones, so map back to the retrieved list by id, never by position.
    positions = {src.id: i for i, src in enumerate(sources)}
    decisions = result.decisions(options.resolved_rule())  # every verdict, from the core's one rule
    citations = citation_dicts(result, options.top_k, options.min_score, positions, decisions)
    used = used_documents(documents, result, decisions, positions)
    summary = summarize(result, attributor, citations, decisions, positions)
    message = answer if isinstance(answer, AIMessage) else None
    if isinstance(answer, AIMessageChunk):
        message = message_chunk_to_message(answer)  # a streamed answer, aggregated
    cited_answer = annotate_message(message, result, citations, summary) if isinstance(message, AIMessage) else None
    return Cited(result, citations, used, cited_answer, summary)


def citation_dicts(
    result: AttributionResult,
    top_k: int | None,
    min_score: float,
    positions: Mapping[str, int] | None = None,
    decisions: Decisions | None = None,
) -> list[dict[str, Any]]:
    """Ranked, JSON-ready citations: the decision rule's citations (``decisions.citations``: only
    used documents, only supported answer sentences, none for an unsupported answer), those
    scoring above ``min_score``, the best ``top_k`` of them.

    Each: ``rank``, ``source_index`` (position in the retrieved list), ``document_id``,
    ``metadata``, ``sentence_index``, ``sentence``, ``start``/``end`` (offsets of the sentence
    in the document's ``page_content``), ``score`` (nats), ``share`` (of the total positive
    sentence score), ``answer_sentences`` (indices) with their ``answer_spans`` (offsets into
    the answer text), and ``scored_by`` (the model that scored it).

    ``positions``: document id -> position in the retrieved list (default: the result's own order).
    ``decisions``: the verdicts to list (default: ``result.decisions()``, the core's default rule).
    """
    decisions = decisions if decisions is not None else result.decisions()
    kept = [c for c in decisions.citations if c.score > min_score]  # ranked by score: a cut keeps a prefix
    out = []
    for rank, c in enumerate(kept[: int(top_k)] if top_k is not None else kept, start=1):
        spans = [result.answer_sentences[j] for j in c.answer_sentences]
        out.append({
            "rank": rank,
            "source_index": positions[c.source_id] if positions is not None else c.source_index,
            "document_id": c.source_id,
            "metadata": c.metadata,
            "sentence_index": c.sentence_index,
            "sentence": c.sentence,
            "start": c.start,
            "end": c.end,
            "score": c.score,
            "share": c.share,
            "answer_sentences": list(c.answer_sentences),
            "answer_spans": [{"index": s.index, "start": s.start, "end": s.end, "text": s.text} for s in spans],
            "scored_by": c.scored_by,
        })
    return out


def used_documents(
    documents: Sequence[Document],
    result: AttributionResult,
    decisions: Decisions,
    positions: Mapping[str, int] | None = None,
) -> list[Document]:
    """Copies of the documents the answer used (``decisions.used``; retrieval order), scores added
    to their metadata. An answer the context does not support used none.

    ``positions``: source id -> index into ``documents`` (needed when the core dropped sources).
    A document the core dropped to fit the context window was not scored, so it is not used.
    """
    index = positions if positions is not None else {src.id: i for i, src in enumerate(result.sources)}
    return [
        documents[index[row.id]].model_copy(
            update={"metadata": {**documents[index[row.id]].metadata, SCORE_KEY: row.score, SHARE_KEY: row.share}}
        )
        for row in result.source_rows(decisions=decisions)
        if row.used
    ]


def summarize(
    result: AttributionResult,
    attributor: Attributor,
    citations: list[dict[str, Any]],
    decisions: Decisions,
    positions: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """A JSON-ready summary: scoring model(s), strategy, the verdicts, per-document scores, timing.

    ``supported``: does the retrieved context support the answer (``None``: not checked);
    ``lift``: how much the retrieved context raises the answer's log-likelihood (nats, all
    documents vs none); ``answer_sentences``: per answer sentence ``index``, ``text``,
    ``start``/``end`` (offsets into the answer), ``supported`` and ``score`` (its lift, nats);
    ``noise``: the result's noise bound (nats), below which no score counts.
    ``documents[*].used``/``evidence`` are the rule's verdicts; ``documents[*].index`` is the
    position in the retrieved list (``positions``: id -> position); ``dropped_document_ids`` names
    the documents the core dropped unscored to fit the context window.
    """
    rows = result.source_rows(decisions=decisions)
    index = positions if positions is not None else {src.id: i for i, src in enumerate(result.sources)}
    return jsonable({
        "model": attributor.target.name,
        "proxy": attributor.proxy.name if attributor.proxy is not None else None,
        "strategy": result.strategy,
        "supported": decisions.supported,
        "lift": decisions.lift,
        "noise": decisions.noise,
        "citations": len(citations),
        "documents": [
            {"index": index[r.id], "id": r.id, "title": r.title, "score": r.score, "share": r.share,
             "used": r.used, "evidence": list(r.evidence), "sufficiency": r.sufficiency}
            for r in rows
        ],
        "used_document_ids": [r.id for r in rows if r.used],
        "dropped_document_ids": [src.id for src in result.dropped_sources],
        "answer_sentences": [a.to_dict() for a in decisions.answer_sentences],
        "seconds": result.timing.get("total_seconds"),
    })


# ---------------------------------------------------------------------------------------- messages
def _url(metadata: Mapping[str, Any]) -> str | None:
    url = metadata.get("url")
    if isinstance(url, str) and url:
        return url
    source = metadata.get("source")  # loaders' convention; only a real URL counts
    return source if isinstance(source, str) and "://" in source else None


def annotation(citation: dict[str, Any], answer_sentence: int, start: int, end: int) -> dict[str, Any]:
    """One LangChain ``Citation`` annotation: ``start_index``/``end_index`` index the text block."""
    meta = citation["metadata"]
    block: dict[str, Any] = {
        "type": "citation",
        "id": f"attribot-{citation['rank']}-{answer_sentence}",  # deterministic: batch == invoke
        "start_index": start,
        "end_index": end,
        "cited_text": citation["sentence"],
    }
    title = meta.get("title")
    if title is not None:
        block["title"] = str(title)
    url = _url(meta)
    if url is not None:
        block["url"] = url
    block["extras"] = {
        "attribot_score": citation["score"],
        "attribot_share": citation["share"],
        "attribot_rank": citation["rank"],
        "document_id": citation["document_id"],
        "source_index": citation["source_index"],
        "sentence_index": citation["sentence_index"],
        "source_start": citation["start"],
        "source_end": citation["end"],
    }
    return block


def annotate_message(
    message: AIMessage, result: AttributionResult, citations: list[dict[str, Any]], summary: dict[str, Any]
) -> AIMessage:
    """A copy of ``message`` whose text blocks carry citation annotations, and a summary under
    ``response_metadata["attribot"]``.

    String content becomes one ``{"type": "text", "text": ..., "annotations": [...]}`` block
    (``message.text`` is unchanged). List content keeps its blocks; each annotation goes to the
    text block where its answer sentence starts, indexed relative to that block (a sentence
    running on into the next block is cut at the block's end). Annotations are ordered by
    position, then rank; one per (citation, supported answer sentence).
    """
    content = message.content
    blocks: list[Any] = [content] if isinstance(content, str) else list(content)
    # [start, end) of each text block within message.text (its text blocks joined with "")
    ranges: dict[int, tuple[int, int]] = {}
    pos = 0
    for b, block in enumerate(blocks):
        text = block if isinstance(block, str) else block.get("text") if block.get("type") == "text" else None
        if isinstance(text, str):
            ranges[b] = (pos, pos + len(text))
            pos += len(text)
    per_block: dict[int, list[tuple[tuple[int, int], dict[str, Any]]]] = {}
    for c in citations:
        for j in c["answer_sentences"]:
            s = result.answer_sentences[j]
            for b, (lo, hi) in ranges.items():
                if lo <= s.start < hi:
                    ann = annotation(c, j, s.start - lo, min(s.end, hi) - lo)
                    per_block.setdefault(b, []).append(((s.start, c["rank"]), ann))
                    break
    new_blocks: list[Any] = []
    for b, block in enumerate(blocks):
        if b not in ranges:
            new_blocks.append(block)
            continue
        base = {"type": "text", "text": block} if isinstance(block, str) else dict(block)
        anns = [a for _, a in sorted(per_block.get(b, []), key=lambda x: x[0])]
        if anns or "annotations" in base:
            base["annotations"] = [*base.get("annotations", []), *anns]
        new_blocks.append(base)
    metadata = {**message.response_metadata, "attribot": summary}
    return message.model_copy(update={"content": new_blocks, "response_metadata": metadata})
