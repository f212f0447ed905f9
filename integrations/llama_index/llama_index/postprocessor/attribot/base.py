"""The node postprocessor: re-rank (and optionally filter) source nodes by what an answer used.

All attribution is done by :class:`attribot_rag.Attributor`; this module only turns LlamaIndex
nodes into attribot sources and the :class:`~attribot_rag.AttributionResult` back into nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from attribot_rag import (
    DEFAULT_MODEL,
    AttributionResult,
    Attributor,
    AttributorConfig,
    EmptyAnswerError,
    InputError,
    LoadedModel,
    NoSourcesError,
    PromptTemplate,
    Source,
    Strategy,
    shared_attributor,
)
from attribot_rag import shared_model as core_shared_model
from attribot_rag.decisions import DEFAULT_RULE, UNSET, DecisionRule
from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_serializer, field_validator, model_validator
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle

from .prompts import llamaindex_qa_template

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)

#: Key of the attribution entry merged into ``Response.metadata`` / ``AgentChatResponse.metadata``.
METADATA_KEY = "attribot"
#: Node metadata key holding the retriever's score (kept there when re-ranking makes ``NodeWithScore.score``
#: the attribution score).
RETRIEVAL_SCORE_KEY = "retrieval_score"
#: Node metadata key holding the attribution score (nats of answer log-likelihood lost without the node).
ATTRIBUTION_SCORE_KEY = "attribution_score"
#: Node metadata key holding the node's share of the total positive attribution score.
ATTRIBUTION_SHARE_KEY = "attribution_share"
_ADDED_KEYS = (RETRIEVAL_SCORE_KEY, ATTRIBUTION_SCORE_KEY, ATTRIBUTION_SHARE_KEY)
#: ``CitationQueryEngine``'s label before each chunk ("Source 2:\n"): shown to the scorer, never cited.
CITATION_LABEL = r"Source \d+:\n"


def shared_model(name: str, dtype: Any = None, device: str | None = None) -> LoadedModel:
    """The process-wide copy of a model loaded by name (:func:`attribot_rag.models.shared_model`):
    every postprocessor, engine wrapper and :class:`AttribotLLM` asking for the same (model, dtype,
    device), and any LangChain component, holds one set of weights. A chat engine built per session
    therefore does not reload the model per session. ``clear_model_cache()`` forgets them."""
    return core_shared_model(name, dtype=dtype, device=device)


class NodeTextError(InputError):
    """A source node has no text to attribute to (an image-only node, an empty chunk)."""


@dataclass
class AttributedNodes:
    """What attribution did to one list of nodes.

    Attributes:
        nodes: the nodes re-ranked by attribution score (highest first), filtered when the
            postprocessor filters; each is a copy whose ``score`` is the attribution score and
            whose metadata holds the retrieval score (what :meth:`postprocess_nodes` returns, and
            a wrapper engine's ``source_nodes`` with ``rerank=True``).
        cited_nodes: the nodes the answer used (the decision rule's ``used`` verdict; every
            citation points into one of them), most relied-on first; copies whose ``score`` is the
            retriever's and whose metadata adds ``attribution_score`` / ``attribution_share``.
        retrieved: the input ``NodeWithScore`` objects themselves, in retrieval order, with their
            own scores: all of them, or those kept by ``filter_unused`` / ``top_n`` (a wrapper
            engine's ``source_nodes`` by default).
        result: the full :class:`attribot_rag.AttributionResult` (its ``source_index`` indexes
            ``result.sources``, the nodes kept after any overflow drop; the citations in
            ``metadata`` give the position in the input node list); ``None`` when a wrapper
            engine skipped the turn (``metadata["skipped"]`` says why).
        metadata: the JSON-ready entry stored under ``response.metadata["attribot"]``.
    """

    nodes: list[NodeWithScore]
    result: AttributionResult | None
    metadata: dict[str, Any] = field(default_factory=dict)
    cited_nodes: list[NodeWithScore] = field(default_factory=list)
    retrieved: list[NodeWithScore] = field(default_factory=list)

    @classmethod
    def skipped(cls, nodes: Sequence[NodeWithScore], question: str | None, answer: str | None,
                reason: str) -> AttributedNodes:
        """A turn left unattributed: the nodes as they came, no citations, and why."""
        return cls(nodes=list(nodes), result=None, retrieved=list(nodes), metadata={
            "question": question, "answer": answer, "skipped": reason, "supported": None, "citations": [],
            "nodes": [], "answer_sentences": []})

    @property
    def citations(self) -> list[dict[str, Any]]:
        """Ranked sentence citations, each with the ``node_id`` it cites."""
        return self.metadata["citations"]


def _require_question(query_str: str | None) -> str:
    if not isinstance(query_str, str) or not query_str.strip():
        raise InputError("no question to attribute with: pass query_str=... (or a query_bundle) with the user's query")
    return query_str


def _require_answer(answer: Any) -> str:
    if answer is None:
        raise EmptyAnswerError(
            "no answer to attribute: AttribotNodePostprocessor runs after generation, so pass the response text "
            "(postprocess_nodes(nodes, query_str=..., answer=str(response))) or wrap the query engine in "
            "AttributedQueryEngine"
        )
    text = answer if isinstance(answer, str) else str(answer)
    if not text.strip():
        raise EmptyAnswerError("the response text is empty: there is nothing to attribute (did the LLM answer?)")
    return text


class AttribotNodePostprocessor(BaseNodePostprocessor):
    """Re-ranks source nodes by how much a given answer relied on each (leave-one-out attribution).

    Use it after generation: ``postprocess_nodes(nodes, query_str=question, answer=answer_text)``
    returns copies of the nodes sorted by attribution score (``NodeWithScore.score``; nats of
    answer log-likelihood lost without the node), with the retriever's score kept in the node
    metadata under ``"retrieval_score"``. With ``filter_unused=True`` only the nodes the answer
    used are returned. :meth:`attribute_nodes` also returns sentence citations.

    Every verdict comes from the core's one decision rule (:mod:`attribot_rag.decisions`;
    ``DEFAULT_RULE`` unless ``rule`` is given, :meth:`resolved_rule` is the rule in force):
    ``supported`` (does the retrieved context support the answer, and each answer sentence),
    ``used`` (per node: the answer is supported and the node is evidence for it, by its
    leave-one-out score or by its sufficiency alone) and the citations (only used nodes, only
    supported answer sentences). An answer the nodes do not support keeps no node under
    ``filter_unused`` and gets no citations.

    The answer can come from any LLM: it is scored as text by the attributor's target model,
    by default the embedded ``"smollm2-135m"`` (loaded on first use), with the prompt LlamaIndex's
    response synthesizer uses by default (:func:`llamaindex_qa_template`; a wrapper engine passes
    the wrapped engine's own ``text_qa_template``) over each node's content as the synthesizer
    renders it (``MetadataMode.LLM``). What the synthesizer puts before a node's text (its metadata
    header, ``"title: ...\n\n"``, and ``CitationQueryEngine``'s ``"Source N:\n"`` label) is shown to
    the scorer as the LLM saw it but is never cited (:attr:`attribot_rag.Source.prefix`).

    Args:
        attributor: an :class:`attribot_rag.Attributor` to score with; when ``None`` one is built
            on first use from ``target``, ``proxy``, ``strategy``, ``dtype`` and ``device``.
        target: the scoring model (short name, local folder or Hub id, or an
            :class:`attribot_rag.LoadedModel` such as ``AttribotLLM.loaded`` to score with the
            generator's own weights), default the embedded default.
        proxy: an optional smaller proxy model (see attribot-rag's strategies; same forms).
        strategy: attribot strategy preset name or :class:`attribot_rag.Strategy`.
        template: the scoring prompt (an :class:`attribot_rag.PromptTemplate`) when no attributor
            is given; ``None`` = the prompt a wrapper engine passes (the wrapped engine's own QA
            prompt), else :func:`llamaindex_qa_template()` (LlamaIndex's default QA prompt).
        filter_unused: drop the nodes the answer did not use.
        rule: the :class:`attribot_rag.decisions.DecisionRule` behind every verdict (``None``:
            the core's ``DEFAULT_RULE``).
        min_score: override of the rule's ``min_loo`` (least leave-one-out score, nats, for "used"
            by leave-one-out); ``None`` (default): the rule's own value.
        min_share: override of the rule's ``min_share`` (least share of the positive leave-one-out
            total); ``None`` (default): the rule's own value; ``0.0`` disables the share check.
        top_n: keep at most this many nodes after re-ranking (``None`` keeps all).
        citation_top_k: how many sentence citations to report (``None`` = every positive one).
        metadata_mode: which node content is attributed: ``MetadataMode.LLM`` (default) is what
            the synthesizer shows the LLM; ``MetadataMode.NONE`` the bare text, with a ``title``
            metadata entry passed as the document title (for attribot's own prompt template).
            Citation ``start``/``end`` index into ``node.text``.
        uncitable_prefix: a regular expression; text it matches at the start of a node's text is
            shown to the scorer but never cited (default :data:`CITATION_LABEL`,
            ``CitationQueryEngine``'s ``"Source N:\n"``; ``None``: off). The metadata header is
            never citable whatever this is.
    """

    attributor: Attributor | None = Field(default=None, exclude=True, description="Attributor to score with.")
    target: str | LoadedModel = Field(
        default=DEFAULT_MODEL, description="Scoring model (name or LoadedModel) when no attributor is given.")
    proxy: str | LoadedModel | None = Field(
        default=None, description="Optional proxy model when no attributor is given.")
    strategy: str | Strategy = Field(default="auto", description="attribot strategy preset or Strategy.")
    template: PromptTemplate | None = Field(
        default=None, description="Scoring prompt when no attributor is given (None: LlamaIndex's QA prompt)."
    )
    dtype: str | None = Field(default=None, description="Model dtype ('fp32', 'bf16', ...) when no attributor.")
    device: str | None = Field(default=None, description="Model device when no attributor is given.")
    filter_unused: bool = Field(default=False, description="Drop the nodes the answer did not use.")
    rule: DecisionRule | None = Field(
        default=None, description="The decision rule behind every verdict (None: attribot_rag's DEFAULT_RULE)."
    )
    min_score: float | None = Field(
        default=None, description="Override of the rule's min_loo (nats); None: the rule's value."
    )
    min_share: float | None = Field(
        default=None, description="Override of the rule's min_share; None: the rule's value, 0 disables it."
    )
    top_n: int | None = Field(default=None, description="Keep at most this many nodes after re-ranking.")
    citation_top_k: int | None = Field(default=10, description="How many sentence citations to report.")
    metadata_mode: MetadataMode = Field(default=MetadataMode.LLM, description="Which node content to attribute.")
    uncitable_prefix: str | None = Field(
        default=CITATION_LABEL,
        description="Regex: text it matches at the start of a node's text is scored but never cited.")
    _attributors: dict[Any, Attributor] = PrivateAttr(default_factory=dict)

    @field_serializer("target", "proxy")
    def _model_name(self, value: Any) -> str | None:
        return value if value is None or isinstance(value, str) else str(getattr(value, "name", value))

    @field_validator("uncitable_prefix")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"uncitable_prefix is not a regular expression: {exc}") from exc
        return value

    @field_validator("top_n", "citation_top_k")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be >= 1 (or None)")
        return value

    @field_validator("min_share")
    @classmethod
    def _share(cls, value: float | None) -> float | None:
        if value is not None and not 0 <= value <= 1:
            raise ValueError("min_share must be in [0, 1] (0 disables the share check; None: the rule's value)")
        return value

    @field_validator("min_score")
    @classmethod
    def _not_nan(cls, value: float | None) -> float | None:
        if value is not None and math.isnan(value):  # every comparison with NaN is False
            raise ValueError("min_score must be a number of nats, not NaN")
        if value is not None and not math.isfinite(value):
            raise ValueError(f"min_score must be a finite number of nats, got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_settings(self) -> AttribotNodePostprocessor:
        # Fail when the postprocessor (or an engine wrapper) is built, not after a turn was answered
        # and written to chat memory: the attributor and its model are only built on first use.
        if self.attributor is None:
            self.attributor_config()  # ConfigError / DeviceError: nothing is loaded to find out
        self.resolved_rule()  # ConfigError for an override the rule does not accept
        return self

    def resolved_rule(self) -> DecisionRule:
        """The decision rule in force: ``rule`` (else the core's ``DEFAULT_RULE``) with the
        ``min_score`` / ``min_share`` overrides; with none it *is* that rule object."""
        base = self.rule if self.rule is not None else DEFAULT_RULE
        return base.with_options(min_loo=UNSET if self.min_score is None else self.min_score,
                                 min_share=UNSET if self.min_share is None else self.min_share)

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> AttribotNodePostprocessor:
        """A deep copy that shares the attributor: its loaded model is never duplicated."""
        memo = {} if memo is None else memo
        for attributor in (self.attributor, *self._attributors.values()):
            if attributor is not None:
                memo[id(attributor)] = attributor
        return super().__deepcopy__(memo)

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex serializes this component under."""
        return "AttribotNodePostprocessor"

    # ------------------------------------------------------------------ attributor
    def scoring_template(self, template: PromptTemplate | None = None) -> PromptTemplate:
        """The scoring prompt used when no attributor is given: ``self.template``, else ``template``
        (a wrapper engine's mirrored QA prompt), else :func:`llamaindex_qa_template()`."""
        return self.template or template or llamaindex_qa_template()

    def attributor_config(self, template: PromptTemplate | None = None) -> AttributorConfig:
        """The settings of the attributor built when none is given (checked, nothing loaded);
        ``template``: see :meth:`scoring_template`."""
        return AttributorConfig(self.target, self.proxy, strategy=self.strategy, device=self.device,
                                dtype=self.dtype, template=self.scoring_template(template))

    def get_attributor(self, template: PromptTemplate | None = None) -> Attributor:
        """The attributor in use: given, or the process-wide one for :meth:`attributor_config`
        (:func:`attribot_rag.shared_attributor`: built, and its model loaded, on first call; shared by
        every postprocessor and engine wrapper with equal settings). A given attributor scores with
        its own template; ``template`` only shapes the one built here."""
        if self.attributor is not None:
            return self.attributor
        key = self.scoring_template(template)
        hit = self._attributors.get(key)
        if hit is None:
            hit = self._attributors[key] = shared_attributor(self.attributor_config(template))
        return hit

    # ------------------------------------------------------------------ public API
    def postprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
        query_str: str | None = None,
        answer: str | None = None,
    ) -> list[NodeWithScore]:
        """Re-rank (and filter) ``nodes`` by how much ``answer`` used each one.

        Args:
            nodes: the source nodes the answer was generated from.
            query_bundle / query_str: the user's question (one of them).
            answer: the generated answer text (required: attribution happens after generation).
        """
        question = self._question(query_bundle, query_str)
        return self.attribute_nodes(nodes, question, answer).nodes

    async def apostprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
        query_str: str | None = None,
        answer: str | None = None,
    ) -> list[NodeWithScore]:
        """Async :meth:`postprocess_nodes` (the model runs in a worker thread)."""
        question = self._question(query_bundle, query_str)
        return (await self.aattribute_nodes(nodes, question, answer)).nodes

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        """LlamaIndex's hook; it carries no answer, so attribution cannot run from here."""
        _require_answer(None)
        return nodes  # pragma: no cover - _require_answer(None) always raises

    @dispatcher.span
    def attribute_nodes(
        self, nodes: Sequence[NodeWithScore], query_str: str, answer: str, history: Sequence[Any] | None = None,
        *, template: PromptTemplate | None = None,
    ) -> AttributedNodes:
        """Attribute ``answer`` to ``nodes``: re-ranked nodes, cited nodes, the full result and citations.

        ``history``: earlier chat turns shown before the question (``ChatMessage`` objects or
        ``{"role", "content"}`` dicts, user/assistant roles), as context that is never ablated.
        ``template``: the prompt the answer was generated with, as an attribot ``PromptTemplate``
        (:func:`llamaindex_qa_template` of the engine's QA prompt); used unless the postprocessor
        has an ``attributor`` or a ``template`` of its own (see :meth:`scoring_template`).

        Raises:
            NoSourcesError: ``nodes`` is empty.
            EmptyAnswerError: ``answer`` is ``None`` or blank.
            NodeTextError: a node has no text (e.g. an image node).
            attribot_rag.InputError: any other input attribot-rag rejects (too long a context, ...).
        """
        nodes, question, answer, (sources, offsets) = self._prepare(nodes, query_str, answer)
        attributor = self.get_attributor(template)
        with self._traced(nodes, question, attributor.target.name) as out:
            result = attributor.attribute(question, sources, answer, history=history)  # takes its lock
            out.append(self._rank(nodes, sources, offsets, result, attributor))
        return out[0]

    @dispatcher.span
    async def aattribute_nodes(
        self, nodes: Sequence[NodeWithScore], query_str: str, answer: str, history: Sequence[Any] | None = None,
        *, template: PromptTemplate | None = None,
    ) -> AttributedNodes:
        """Async :meth:`attribute_nodes`; the forward passes run in a worker thread."""
        nodes, question, answer, (sources, offsets) = self._prepare(nodes, query_str, answer)
        attributor = await asyncio.to_thread(self.get_attributor, template)
        with self._traced(nodes, question, attributor.target.name) as out:
            result = await attributor.aattribute(question, sources, answer, history=history)
            out.append(self._rank(nodes, sources, offsets, result, attributor))
        return out[0]

    @contextlib.contextmanager
    def _traced(self, nodes: list[NodeWithScore], question: str, model: str) -> Iterator[list[AttributedNodes]]:
        """Report the re-ranking as LlamaIndex rerankers do: instrumentation ReRank events and a
        RERANKING callback event, so tracing tools see it. The body appends its result to the list."""
        top_n = self.top_n or len(nodes)
        dispatcher.event(ReRankStartEvent(query=question, nodes=nodes, top_n=top_n, model_name=model))
        out: list[AttributedNodes] = []
        with self.callback_manager.event(CBEventType.RERANKING, payload={
            EventPayload.NODES: nodes, EventPayload.MODEL_NAME: model, EventPayload.QUERY_STR: question,
            EventPayload.TOP_K: top_n,
        }) as event:
            yield out
            event.on_end(payload={EventPayload.NODES: out[0].nodes})
        dispatcher.event(ReRankEndEvent(nodes=out[0].nodes))

    def attribute_turn(
        self, nodes: Sequence[NodeWithScore], query_str: str, answer: str | None, history: Sequence[Any] | None = None,
        *, template: PromptTemplate | None = None,
    ) -> AttributedNodes:
        """:meth:`attribute_nodes` for wrapper engines: a turn with no source nodes or no answer
        (the engine answered without retrieval) is returned skipped, with a warning, not raised.
        The plain engine answered it; attribution must not turn that answer into an error."""
        skipped = _skipped_turn(nodes, query_str, answer)
        if skipped is not None:
            return skipped
        return self.attribute_nodes(nodes, query_str, answer, history, template=template)

    async def aattribute_turn(
        self, nodes: Sequence[NodeWithScore], query_str: str, answer: str | None, history: Sequence[Any] | None = None,
        *, template: PromptTemplate | None = None,
    ) -> AttributedNodes:
        """Async :meth:`attribute_turn`."""
        skipped = _skipped_turn(nodes, query_str, answer)
        if skipped is not None:
            return skipped
        return await self.aattribute_nodes(nodes, query_str, answer, history, template=template)

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _question(query_bundle: QueryBundle | None, query_str: str | None) -> str:
        if query_str is not None and query_bundle is not None:
            raise ValueError("Cannot specify both query_str and query_bundle")
        return _require_question(query_bundle.query_str if query_bundle is not None else query_str)

    def _prepare(
        self, nodes: Sequence[NodeWithScore] | None, query_str: str | None, answer: Any
    ) -> tuple[list[NodeWithScore], str, str, tuple[list[Source], list[int | None]]]:
        nodes = list(nodes or [])
        if not nodes:
            raise NoSourcesError(
                "there are no source nodes to attribute to: the retriever returned nothing (or the engine does "
                "not return source nodes); check the index and the retriever's top-k"
            )
        question = _require_question(query_str)
        text = _require_answer(answer)
        return nodes, question, text, self._sources(nodes)

    def _sources(self, nodes: list[NodeWithScore]) -> tuple[list[Source], list[int | None]]:
        """One attribot source per node, and where each source's text starts in ``node.text``
        (``None``: it does not come from ``node.text``). What the synthesizer shows before the node's
        text (the metadata header, a ``"Source N:"`` label) is the source's uncitable ``prefix``."""
        sources, offsets, seen = [], [], set()
        for i, nws in enumerate(nodes):
            if not isinstance(nws, NodeWithScore):
                raise InputError(f"source node {i} is a {type(nws).__name__}; pass NodeWithScore objects")
            node = nws.node
            try:
                text = node.get_content(metadata_mode=self.metadata_mode)
            except Exception:  # noqa: BLE001 - some node types have no text at all
                text = None
            if not isinstance(text, str) or not text.strip():
                raise NodeTextError(
                    f"source node {i} (id {node.node_id!r}, {type(node).__name__}) has no text to attribute to: "
                    "drop non-text nodes (images, empty chunks) before attribution"
                )
            sid = node.node_id
            if sid in seen:  # the same node retrieved twice: keep both, ids must be unique
                sid = f"{sid}#{i}"
            seen.add(sid)
            meta: dict[str, Any] = {"node_id": node.node_id}
            retrieval = _retrieval_score(nws)
            if retrieval is not None:  # what overflow="drop_lowest_score" ranks by
                meta["score"] = retrieval
            title = node.metadata.get("title")
            if (
                self.metadata_mode == MetadataMode.NONE
                and title is not None
                and "title" not in node.excluded_llm_metadata_keys
            ):
                meta["title"] = str(title)
            prefix, body, offset = _split_content(node, text, self.uncitable_prefix)
            sources.append(Source(id=sid, text=body, metadata=meta, prefix=prefix))
            offsets.append(offset)
        return sources, offsets

    def _rank(self, nodes: list[NodeWithScore], sources: list[Source], offsets: list[int | None],
              result: AttributionResult, attributor: Attributor) -> AttributedNodes:
        # The core may drop sources to fit the context window (``overflow=``) and then lists only
        # the kept ones: map its scores back to the nodes by id, never by position.
        position = {src.id: i for i, src in enumerate(sources)}
        verdicts = result.decisions(self.resolved_rule())  # every verdict, from the core's one rule
        rows = result.source_rows(decisions=verdicts)
        scores: list[float | None] = [None] * len(nodes)
        shares: list[float | None] = [None] * len(nodes)
        used = [False] * len(nodes)  # a dropped node was not scored, so not used
        evidence: list[list[str]] = [[] for _ in nodes]
        for row in rows:
            i = position[row.id]
            scores[i], shares[i], used[i], evidence[i] = row.score, row.share, row.used, list(row.evidence)
        # by the core's rank (ties keep retrieval order); dropped (unscored) nodes go last, in retrieval order
        order = [position[r.id] for r in sorted(rows, key=lambda r: r.rank)]
        order += [i for i in range(len(nodes)) if scores[i] is None]
        kept = [i for i in order if used[i]] if self.filter_unused else list(order)
        if self.top_n is not None:
            kept = kept[: self.top_n]
        kept_set = set(kept)

        annotated = {i: _annotated(nodes[i].node, _retrieval_score(nodes[i]), scores[i], shares[i])
                     for i in {*kept, *(i for i in order if used[i])}}
        out = [NodeWithScore(node=annotated[i], score=scores[i]) for i in kept]
        cited_nodes = [NodeWithScore(node=annotated[i], score=_retrieval_score(nodes[i])) for i in order if used[i]]
        retrieved = [nodes[i] for i in range(len(nodes)) if i in kept_set]
        node_ids = [n.node.node_id for n in nodes]
        citations = []
        cited = verdicts.citations  # ranked; only used nodes, only supported answer sentences
        for c in cited[: self.citation_top_k] if self.citation_top_k is not None else cited:
            entry = c.to_dict()
            entry.pop("metadata", None)
            i = entry["source_index"] = position[c.source_id]  # in the retrieved list
            entry["node_id"] = node_ids[i]
            # Offsets into the attributed content (prefix + text), and into node.text.
            lead = len(sources[i].prefix)
            entry["content_start"], entry["content_end"] = c.start + lead, c.end + lead
            entry["start"], entry["end"] = _text_span(nodes[i].node, offsets[i], c)
            citations.append(entry)
        metadata = {
            "question": result.question,
            "answer": result.answer,
            "strategy": result.strategy,
            "scored_by": attributor.target.name,
            "supported": verdicts.supported,
            "lift": verdicts.lift,
            "noise": verdicts.noise,
            "citations": citations,
            "nodes": [
                {
                    "node_id": node_ids[i],
                    "retrieval_rank": i,
                    "retrieval_score": _retrieval_score(nodes[i]),
                    "attribution_score": scores[i],
                    "share": shares[i],
                    "used": used[i],
                    "evidence": evidence[i],
                    "kept": i in kept_set,
                    "dropped": scores[i] is None,  # dropped unscored by the core to fit the context window
                }
                for i in order
            ],
            "answer_sentences": [a.to_dict() for a in verdicts.answer_sentences],
            "timing": result.timing,
        }
        return AttributedNodes(nodes=out, result=result, metadata=metadata, cited_nodes=cited_nodes,
                               retrieved=retrieved)


def _skipped_turn(nodes: Sequence[NodeWithScore] | None, question: str, answer: Any) -> AttributedNodes | None:
    """The turn returned unattributed (with a warning) when it has no source nodes or no answer text, else None."""
    if not nodes:
        reason = "no source nodes (the retriever returned nothing, or the engine answered without retrieval)"
    elif not isinstance(answer, str) or not answer.strip():
        reason = "the engine returned no answer text"
    else:
        return None
    logger.warning("attribot: answer left unattributed: %s", reason)
    return AttributedNodes.skipped(nodes or [], question, answer, reason)


def _retrieval_score(nws: NodeWithScore) -> float | None:
    """The retriever's score of ``nws`` (a node attributed before carries it in its metadata)."""
    if ATTRIBUTION_SCORE_KEY in nws.node.metadata:
        return nws.node.metadata.get(RETRIEVAL_SCORE_KEY)
    return nws.score


def _split_content(node: BaseNode, content: str, label: str | None) -> tuple[str, str, int | None]:
    """``(prefix, body, offset)``: the synthesizer's rendering of ``node`` cut into what precedes the
    node's own text (never citable) and the text from there on; ``offset`` is where ``body`` starts in
    ``node.text`` (``None`` when the content does not hold ``node.text``). A leading match of the
    ``label`` regex (``"Source N:\n"``) moves into the prefix too."""
    text = getattr(node, "text", None)
    stripped = text.strip() if isinstance(text, str) else ""
    # LlamaIndex renders "{metadata_str}\n\n{content}": the text is the last match (a title may repeat it)
    pos = content.rfind(stripped) if stripped else -1
    if pos < 0:
        return "", content, None
    prefix, body, offset = content[:pos], content[pos:], len(text) - len(text.lstrip())
    found = re.match(label, body) if label else None
    if found and body[found.end():].strip():
        rest = body[found.end():]
        cut = found.end() + len(rest) - len(rest.lstrip())  # the core strips the text: keep its whitespace here
        prefix, body, offset = prefix + body[:cut], body[cut:], offset + cut
    if not prefix.strip():  # only whitespace before the text: rendered stripped, as before
        prefix = ""
    return prefix, body, offset


def _text_span(node: BaseNode, offset: int | None, citation: Any) -> tuple[int | None, int | None]:
    """The citation's ``[start, end)`` in ``node.text``; ``(None, None)`` if it lies outside it."""
    text = getattr(node, "text", None)
    if offset is None or not isinstance(text, str):
        return None, None
    start, end = citation.start + offset, citation.end + offset
    if end > len(text) or text[start:end] != citation.sentence:
        return None, None
    return start, end


def _annotated(node: BaseNode, retrieval: float | None, score: float | None, share: float | None) -> BaseNode:
    """A copy of ``node`` whose metadata holds the scores (hidden from embeddings and the LLM).

    The original is left untouched: retrievers often hand out the docstore's own node objects.
    """
    copy = node.model_copy()
    copy.metadata = {
        **node.metadata,
        RETRIEVAL_SCORE_KEY: retrieval,
        ATTRIBUTION_SCORE_KEY: score,
        ATTRIBUTION_SHARE_KEY: share,
    }
    copy.excluded_llm_metadata_keys = [*node.excluded_llm_metadata_keys, *_missing(node.excluded_llm_metadata_keys)]
    copy.excluded_embed_metadata_keys = [
        *node.excluded_embed_metadata_keys, *_missing(node.excluded_embed_metadata_keys)
    ]
    return copy


def _missing(keys: list[str]) -> list[str]:
    return [k for k in _ADDED_KEYS if k not in keys]
