"""A query engine wrapper whose responses carry attribution: citations and the nodes the answer used."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass, field
from typing import Any

from attribot_rag import ConfigError, PromptTemplate
from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.response.schema import (
    RESPONSE_TYPE,
    AsyncStreamingResponse,
    PydanticResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.bridge.pydantic import Field, model_validator
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.schema import NodeWithScore, QueryBundle, QueryType

from .base import METADATA_KEY, AttribotNodePostprocessor, AttributedNodes
from .prompts import llamaindex_qa_template

logger = logging.getLogger(__name__)


def _bundle(query: QueryType) -> QueryBundle:
    return query if isinstance(query, QueryBundle) else QueryBundle(str(query))


@dataclass
class AttributedResponse(Response):
    """A :class:`Response` with ``cited_nodes``: the source nodes the answer used, most relied-on first."""

    cited_nodes: list[NodeWithScore] = field(default_factory=list)


@dataclass
class AttributedPydanticResponse(PydanticResponse):
    """A :class:`PydanticResponse` with ``cited_nodes`` (see :class:`AttributedResponse`)."""

    cited_nodes: list[NodeWithScore] = field(default_factory=list)


@dataclass
class AttributedStreamingResponse(StreamingResponse):
    """A :class:`StreamingResponse` whose ``response_gen`` yields the wrapped engine's tokens untouched;
    when the stream ends the answer is attributed and ``metadata["attribot"]``, ``cited_nodes`` (and
    the re-ranked ``source_nodes`` with ``rerank=True``) are filled in, on this object."""

    cited_nodes: list[NodeWithScore] = field(default_factory=list)

    def get_response(self) -> AttributedResponse:
        """The finished response (consumes the stream first, which runs the attribution)."""
        done = super().get_response()
        return AttributedResponse(done.response, self.source_nodes, self.metadata, cited_nodes=self.cited_nodes)


@dataclass
class AttributedAsyncStreamingResponse(AsyncStreamingResponse):
    """The async :class:`AttributedStreamingResponse` (``async_response_gen()``; attribution runs
    in a worker thread when the stream ends)."""

    cited_nodes: list[NodeWithScore] = field(default_factory=list)

    async def get_response(self) -> AttributedResponse:
        """The finished response (consumes the stream first, which runs the attribution)."""
        done = await super().get_response()
        return AttributedResponse(done.response, self.source_nodes, self.metadata, cited_nodes=self.cited_nodes)


def _answer_text(response: Response | PydanticResponse) -> str | None:
    if isinstance(response, PydanticResponse):
        return response.response.model_dump_json() if response.response is not None else None
    return response.response


def _synthesizer_llm(engine: Any) -> Any:
    """The LLM of ``engine``'s response synthesizer (picks a selector prompt's variant), if it has one."""
    try:
        synthesizer = engine._get_prompt_modules().get(_SYNTHESIZER)  # PromptMixin's own module table
    except Exception:  # noqa: BLE001 - an engine without prompt modules
        return None
    return getattr(synthesizer, "_llm", None)


_SYNTHESIZER = "response_synthesizer"
_QA_PROMPT = f"{_SYNTHESIZER}:text_qa_template"


class AttributedQueryEngine(CustomQueryEngine):
    """Wraps any query engine; its responses carry citations and the nodes the answer used.

    ``query``/``aquery`` run the wrapped engine, attribute ``response.response`` over
    ``response.source_nodes`` with :class:`AttribotNodePostprocessor`, and return the same kind
    of response (an :class:`AttributedResponse`, or the streaming / Pydantic variant) with:

    * ``source_nodes``: the wrapped engine's nodes, untouched: the retriever's order and
      ``NodeWithScore.score`` (only the nodes the answer used, in that order, when the
      postprocessor has ``filter_unused=True``). With ``rerank=True`` they are copies re-ranked
      by attribution instead, ``score`` = attribution score (nats), the retriever's score kept in
      each node's metadata as ``"retrieval_score"``;
    * ``cited_nodes``: the nodes the answer used (the decision rule's ``used`` verdict), most
      relied-on first; copies whose ``score`` is the retriever's and whose metadata adds
      ``attribution_score`` / ``attribution_share`` (hidden from the LLM and the embedder);
    * ``metadata["attribot"]``: ``supported`` (does the retrieved context support the answer;
      ``None`` when the rule checks no support), ``answer_sentences`` (per sentence ``text``,
      ``start``/``end``, ``supported`` and ``score``, its context lift in nats), ``noise`` (the
      noise bound, nats), citations (each with its ``node_id``), per-node scores and verdicts,
      and timing, merged next to the synthesizer's ``{node_id: metadata}``. The verdicts come
      from the core's decision rule (see :class:`AttribotNodePostprocessor`): an unsupported
      answer gets no citations and no cited nodes.

    The scoring prompt is the wrapped engine's own QA prompt (its response synthesizer's
    ``text_qa_template``, mirrored by :func:`llamaindex_qa_template`, read at each query so
    ``update_prompts`` is followed), unless the postprocessor has a ``template`` or an
    ``attributor`` of its own. What the synthesizer shows before each node's text (the metadata
    header, ``CitationQueryEngine``'s ``"Source N:"`` label) is scored but never cited.

    A response with no source nodes or no answer text comes back unattributed, with
    ``metadata["attribot"]["skipped"]`` saying why (see :meth:`AttribotNodePostprocessor.attribute_turn`).

    Streaming: a wrapped engine built with ``streaming=True`` gives an
    :class:`AttributedStreamingResponse` (``aquery``: :class:`AttributedAsyncStreamingResponse`
    when the engine streams asynchronously): its ``response_gen`` yields the engine's tokens as
    they come, and when the stream ends the answer is attributed and the citations arrive on the
    same object (``metadata["attribot"]``, ``cited_nodes``, re-ranked ``source_nodes`` with
    ``rerank=True``), with the same instrumentation events as a non-streaming query. A stream
    left unfinished is not attributed.

    Example:
        >>> engine = AttributedQueryEngine(query_engine=index.as_query_engine(llm=llm))
        >>> response = engine.query("Who built the Eiffel Tower?")
        >>> response.cited_nodes, response.metadata["attribot"]["citations"][:3]
    """

    query_engine: BaseQueryEngine = Field(description="The query engine whose answers are attributed.")
    postprocessor: AttribotNodePostprocessor = Field(
        default_factory=AttribotNodePostprocessor, description="Does the attribution and re-ranking."
    )
    rerank: bool = Field(
        default=False, description="Return source_nodes re-ranked by attribution (score = attribution score)."
    )

    @model_validator(mode="after")
    def _check_prompt(self) -> AttributedQueryEngine:
        # A QA prompt that cannot be mirrored fails here, not after the engine has answered.
        if self._mirrors():
            self.engine_template()
        return self

    @classmethod
    def from_defaults(
        cls, query_engine: BaseQueryEngine, postprocessor: AttribotNodePostprocessor | None = None,
        rerank: bool = False, **kwargs: Any,
    ) -> AttributedQueryEngine:
        """Wrap ``query_engine``; ``kwargs`` build the postprocessor when none is given.

        Example: ``AttributedQueryEngine.from_defaults(engine, filter_unused=True, strategy="documents")``.
        """
        if postprocessor is not None and kwargs:
            raise ValueError("pass either a postprocessor or postprocessor options, not both")
        return cls(query_engine=query_engine, postprocessor=postprocessor or AttribotNodePostprocessor(**kwargs),
                   rerank=rerank)

    def engine_template(self) -> PromptTemplate | None:
        """The wrapped engine's QA prompt (its response synthesizer's ``text_qa_template``, the
        variant for the synthesizer's LLM) as an attribot :class:`~attribot_rag.PromptTemplate`;
        ``None`` when the engine shows none (the postprocessor's default prompt is used then).

        Raises:
            attribot_rag.ConfigError: the prompt cannot be mirrored (a ``RichPromptTemplate``, a
                variable attribution cannot fill): pass ``template=`` to the postprocessor.
        """
        prompt = self.query_engine.get_prompts().get(_QA_PROMPT)
        if prompt is None:
            return None
        try:
            return llamaindex_qa_template(prompt, llm=_synthesizer_llm(self.query_engine))
        except ConfigError as exc:
            raise ConfigError(f"the wrapped engine's text_qa_template cannot be scored as is ({exc}); pass "
                              "AttribotNodePostprocessor(template=attribot_rag.PromptTemplate(...))") from exc

    def scoring_template(self) -> PromptTemplate:
        """The prompt the scorer renders: the postprocessor's attributor's or ``template`` when it
        has one, else the wrapped engine's QA prompt (:meth:`engine_template`), else the default."""
        if self.postprocessor.attributor is not None:
            return self.postprocessor.attributor.template
        return self.postprocessor.scoring_template(self._template())

    def _mirrors(self) -> bool:
        return self.postprocessor.attributor is None and self.postprocessor.template is None

    def _template(self) -> PromptTemplate | None:
        """The engine's mirrored QA prompt for this query (``None``: not needed, or not found)."""
        if not self._mirrors():
            return None
        try:
            return self.engine_template()
        except ConfigError as exc:  # the prompt was changed (update_prompts) after the wrapper was built
            logger.warning("attribot: scoring with the default QA prompt: %s", exc)
            return None

    def _get_prompt_modules(self) -> PromptMixinType:
        """The wrapped engine's prompts stay reachable through get_prompts/update_prompts."""
        return {"query_engine": self.query_engine}

    def query(self, str_or_query_bundle: QueryType) -> RESPONSE_TYPE:
        """Run the wrapped engine (the query bundle is passed through as is), then attribute."""
        with self.callback_manager.as_trace("query"):
            return self._run(_bundle(str_or_query_bundle))

    async def aquery(self, str_or_query_bundle: QueryType) -> RESPONSE_TYPE:
        """Async :meth:`query`; attribution runs in a worker thread."""
        with self.callback_manager.as_trace("query"):
            return await self._arun(_bundle(str_or_query_bundle))

    def custom_query(self, query_str: str) -> RESPONSE_TYPE:
        """CustomQueryEngine's hook: query with a plain string."""
        return self._run(QueryBundle(query_str))

    async def acustom_query(self, query_str: str) -> RESPONSE_TYPE:
        """CustomQueryEngine's async hook: query with a plain string."""
        return await self._arun(QueryBundle(query_str))

    # ------------------------------------------------------------------ internals
    def _run(self, bundle: QueryBundle) -> RESPONSE_TYPE:
        template = self._template()
        response = self.query_engine.query(bundle)
        if isinstance(response, StreamingResponse):
            return self._stream(response, bundle, template)
        if isinstance(response, AsyncStreamingResponse):
            raise TypeError(
                "the wrapped query engine returned an AsyncStreamingResponse from query(): use aquery() instead"
            )
        response = _checked(response)
        attributed = self.postprocessor.attribute_turn(
            response.source_nodes, bundle.query_str, _answer_text(response), template=template)
        return self._attributed(response, attributed)

    async def _arun(self, bundle: QueryBundle) -> RESPONSE_TYPE:
        template = self._template()
        response = await self.query_engine.aquery(bundle)
        if isinstance(response, AsyncStreamingResponse):
            return self._astream(response, bundle, template)
        if isinstance(response, StreamingResponse):
            return self._stream(response, bundle, template)
        response = _checked(response)
        attributed = await self.postprocessor.aattribute_turn(
            response.source_nodes, bundle.query_str, _answer_text(response), template=template)
        return self._attributed(response, attributed)

    def _source_nodes(self, attributed: AttributedNodes) -> list[NodeWithScore]:
        return attributed.nodes if self.rerank else attributed.retrieved

    def _attributed(self, response: Response | PydanticResponse, attributed: AttributedNodes) -> RESPONSE_TYPE:
        """The response with the attribution merged into its metadata, and its cited nodes."""
        metadata = dict(response.metadata or {})  # the synthesizer's {node_id: node metadata} entries stay
        metadata[METADATA_KEY] = attributed.metadata
        kind = AttributedPydanticResponse if isinstance(response, PydanticResponse) else AttributedResponse
        return kind(response.response, source_nodes=self._source_nodes(attributed), metadata=metadata,
                    cited_nodes=attributed.cited_nodes)

    def _fill(self, out: Any, text: str, attributed: AttributedNodes) -> None:
        """Put the answer and its attribution on a streaming response once its stream has ended."""
        out.response_txt = text  # also when the caller iterated response_gen itself
        out.metadata[METADATA_KEY] = attributed.metadata
        out.source_nodes = self._source_nodes(attributed)
        out.cited_nodes = attributed.cited_nodes

    def _stream(self, response: StreamingResponse, bundle: QueryBundle,
                template: PromptTemplate | None) -> AttributedStreamingResponse:
        nodes = list(response.source_nodes)

        def tokens() -> Generator[str, None, None]:
            parts: list[str] = []
            if response.response_txt is None and response.response_gen is not None:
                for token in response.response_gen:  # passed on untouched, as they come
                    parts.append(token)
                    yield token
                response.response_txt = "".join(parts)
            else:  # the wrapped stream was consumed already: its text, once
                parts.append(response.response_txt or "")
                yield parts[0]
            text = "".join(parts)
            attributed = self.postprocessor.attribute_turn(nodes, bundle.query_str, text, template=template)
            self._fill(out, text, attributed)

        out = AttributedStreamingResponse(tokens(), source_nodes=nodes, metadata=dict(response.metadata or {}))
        return out

    def _astream(self, response: AsyncStreamingResponse, bundle: QueryBundle,
                 template: PromptTemplate | None) -> AttributedAsyncStreamingResponse:
        nodes = list(response.source_nodes)

        async def tokens() -> AsyncGenerator[str, None]:
            parts: list[str] = []
            async for token in response.async_response_gen():  # passed on untouched, as they come
                parts.append(token)
                yield token
            text = "".join(parts)
            attributed = await self.postprocessor.aattribute_turn(nodes, bundle.query_str, text, template=template)
            self._fill(out, text, attributed)

        out = AttributedAsyncStreamingResponse(tokens(), source_nodes=nodes, metadata=dict(response.metadata or {}))
        return out


def _checked(response: Any) -> Response | PydanticResponse:
    if isinstance(response, (Response, PydanticResponse)):
        return response
    raise TypeError(f"cannot attribute a {type(response).__name__}: expected a LlamaIndex Response")
