"""A query engine wrapper whose responses carry attribution: re-ranked source nodes and citations."""

from __future__ import annotations

from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.response.schema import (
    RESPONSE_TYPE,
    AsyncStreamingResponse,
    PydanticResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.bridge.pydantic import Field
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.schema import QueryBundle, QueryType

from .base import METADATA_KEY, AttribotNodePostprocessor, AttributedNodes


def _bundle(query: QueryType) -> QueryBundle:
    return query if isinstance(query, QueryBundle) else QueryBundle(str(query))


def _finished(response: Any) -> Response | PydanticResponse:
    """A non-streaming response; a sync stream is consumed here."""
    if isinstance(response, (Response, PydanticResponse)):
        return response
    if isinstance(response, StreamingResponse):
        return response.get_response()
    if isinstance(response, AsyncStreamingResponse):
        raise TypeError(
            "the wrapped query engine returned an AsyncStreamingResponse from query(): use aquery() instead"
        )
    raise TypeError(f"cannot attribute a {type(response).__name__}: expected a LlamaIndex Response")


async def _afinished(response: Any) -> Response | PydanticResponse:
    """A non-streaming response; a sync or async stream is consumed here."""
    if isinstance(response, AsyncStreamingResponse):
        return await response.get_response()
    return _finished(response)


def _answer_text(response: Response | PydanticResponse) -> str | None:
    if isinstance(response, PydanticResponse):
        return response.response.model_dump_json() if response.response is not None else None
    return response.response


def _attributed(response: Response | PydanticResponse, attributed: AttributedNodes) -> Response | PydanticResponse:
    """The response with re-ranked nodes and the attribution merged into its metadata."""
    metadata = dict(response.metadata or {})  # the synthesizer's {node_id: node metadata} entries stay
    metadata[METADATA_KEY] = attributed.metadata
    if isinstance(response, PydanticResponse):
        return PydanticResponse(response=response.response, source_nodes=attributed.nodes, metadata=metadata)
    return Response(response=response.response, source_nodes=attributed.nodes, metadata=metadata)


class AttributedQueryEngine(CustomQueryEngine):
    """Wraps any query engine; its responses' source nodes are ranked by what the answer used.

    ``query``/``aquery`` run the wrapped engine, attribute ``response.response`` over
    ``response.source_nodes`` with :class:`AttribotNodePostprocessor`, and return the response
    with:

    * ``source_nodes`` re-ranked by attribution (``NodeWithScore.score`` = attribution score in
      nats; the retriever's score kept in each node's metadata as ``"retrieval_score"``),
      filtered to the nodes the answer used when the postprocessor has ``filter_unused=True``;
    * ``metadata["attribot"]``: ``supported`` (does the retrieved context support the answer;
      ``None`` when the rule checks no support), ``answer_sentences`` (per sentence ``text``,
      ``start``/``end``, ``supported`` and ``score``, its context lift in nats), ``noise`` (the
      noise bound, nats), citations (each with its ``node_id``), per-node scores and verdicts,
      and timing, merged next to the synthesizer's ``{node_id: metadata}``. The verdicts come
      from the core's decision rule (see :class:`AttribotNodePostprocessor`): an unsupported
      answer gets no citations and, with ``filter_unused=True``, no source nodes.

    A response with no source nodes or no answer text comes back unattributed, with
    ``metadata["attribot"]["skipped"]`` saying why (see :meth:`AttribotNodePostprocessor.attribute_turn`).

    Streaming: when the wrapped engine streams, the stream is consumed first (attribution needs
    the whole answer) and a plain, non-streaming :class:`Response` is returned.

    Example:
        >>> engine = AttributedQueryEngine(query_engine=index.as_query_engine(llm=llm))
        >>> response = engine.query("Who built the Eiffel Tower?")
        >>> response.source_nodes[0].score, response.metadata["attribot"]["citations"][:3]
    """

    query_engine: BaseQueryEngine = Field(description="The query engine whose answers are attributed.")
    postprocessor: AttribotNodePostprocessor = Field(
        default_factory=AttribotNodePostprocessor, description="Does the attribution and re-ranking."
    )

    @classmethod
    def from_defaults(
        cls, query_engine: BaseQueryEngine, postprocessor: AttribotNodePostprocessor | None = None, **kwargs: Any
    ) -> AttributedQueryEngine:
        """Wrap ``query_engine``; ``kwargs`` build the postprocessor when none is given.

        Example: ``AttributedQueryEngine.from_defaults(engine, filter_unused=True, strategy="documents")``.
        """
        if postprocessor is not None and kwargs:
            raise ValueError("pass either a postprocessor or postprocessor options, not both")
        return cls(query_engine=query_engine, postprocessor=postprocessor or AttribotNodePostprocessor(**kwargs))

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

    def custom_query(self, query_str: str) -> Response | PydanticResponse:
        """CustomQueryEngine's hook: query with a plain string."""
        return self._run(QueryBundle(query_str))

    async def acustom_query(self, query_str: str) -> Response | PydanticResponse:
        """CustomQueryEngine's async hook: query with a plain string."""
        return await self._arun(QueryBundle(query_str))

    def _run(self, bundle: QueryBundle) -> Response | PydanticResponse:
        response = _finished(self.query_engine.query(bundle))
        attributed = self.postprocessor.attribute_turn(response.source_nodes, bundle.query_str, _answer_text(response))
        return _attributed(response, attributed)

    async def _arun(self, bundle: QueryBundle) -> Response | PydanticResponse:
        response = await _afinished(await self.query_engine.aquery(bundle))
        attributed = await self.postprocessor.aattribute_turn(
            response.source_nodes, bundle.query_str, _answer_text(response)
        )
        return _attributed(response, attributed)
