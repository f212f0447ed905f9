"""The citation step: a Runnable that adds ranked citations to a RAG chain's output."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, ClassVar

from attribot_rag import DEFAULT_MODEL, Attributor, PromptTemplate
from attribot_rag.decisions import UNSET, DecisionRule
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import run_in_executor
from langchain_core.runnables.utils import AddableDict

from ._convert import (
    ANSWER_KEYS,
    DOCUMENTS_KEYS,
    QUESTION_KEYS,
    Cited,
    CiteOptions,
    call_options,
    check_documents,
    check_history_messages,
    cite,
    conversation,
    merge_documents,
    pick_key,
    question_text,
    tool_documents,
)
from ._models import ModelLike
from ._settings import ScorerSettings
from .errors import ChainInputError
from .prompts import ChainPrompt, as_chain_prompt, scoring_attributor, scoring_history


class AttribotCitations(Runnable[dict[str, Any], dict[str, Any]]):
    """Cite which retrieved documents (and which of their sentences) a RAG answer used.

    Put it after the step that produced the answer; it takes the chain's dict and returns it
    with ``citations`` and ``used_context`` added (and ``cited_answer`` for message answers)::

        chain = (
            RunnableParallel(context=retriever, question=RunnablePassthrough())
            | RunnablePassthrough.assign(answer=prompt | llm)
            | AttribotCitations()
        )
        out = chain.invoke("Who built the Eiffel Tower?")
        out["citations"][0]["document_id"], out["citations"][0]["sentence"]

    To assign only one key, pick it: ``RunnablePassthrough.assign(citations=AttribotCitations().pick("citations"))``.

    Input keys (auto-detected unless named): the question (``question``, ``input``,
    ``query``), the retrieved ``Document`` list (``context``, ``documents``, ``docs``,
    ``source_documents``) and the answer (``answer``, ``output``, ``result``, ``response``) as
    a ``str`` or an ``AIMessage``. Every document needs an id (``Document.id``, which vector
    stores fill in, or ``metadata[id_key]``).

    Output keys added:

    * ``citations``: ranked JSON-ready dicts (``rank``, ``source_index``, ``document_id``,
      ``metadata``, ``sentence_index``, ``sentence``, ``start``/``end`` into the document's
      ``page_content``, ``score`` in nats, ``share`` of the total, ``answer_sentences`` and
      ``answer_spans`` into the answer text, ``scored_by``).
    * ``used_context``: copies of the documents the answer used, in retrieval order, with
      ``attribot_score``/``attribot_share`` added to their metadata.
    * ``attribot``: a JSON-ready summary: ``supported`` (does the retrieved context support the
      answer; ``None`` when not checked), ``answer_sentences`` (per answer sentence ``text``,
      ``start``/``end``, ``supported`` and ``score``, its context lift in nats), ``noise`` (the
      noise bound, nats), per-document scores and verdicts, the scoring model and timing.
    * ``cited_answer`` (answer is an ``AIMessage``): a copy whose content is text blocks with
      LangChain ``Citation`` annotations (``cited_text``, ``start_index``/``end_index`` into the
      text, ``title``/``url`` from metadata, scores in ``extras``) and the summary under
      ``response_metadata["attribot"]``.

    Every verdict comes from the core's one decision rule (:mod:`attribot_rag.decisions`,
    ``DEFAULT_RULE`` unless ``rule`` is given): an answer the documents do not support gets no
    citations, no annotations and an empty ``used_context``; only used documents are cited, and
    only for the answer sentences the context supports.

    The answer is scored by a local model (``model``, default the embedded SmolLM2-135M), so it
    may come from any chat model, including one behind an API. The model is loaded on first
    use and shared by every component with the same settings, across calls and threads; work
    on it is serialised. ``ainvoke``/``abatch``/``astream`` run it in a worker thread, so the
    event loop stays free. ``stream`` passes the incoming chunks (e.g. answer tokens) through
    as they arrive and yields the citations last; the chunks add up to ``invoke``'s output.

    Per-call options: ``invoke``/``ainvoke``/``batch``/``stream`` (and ``.bind(...)``) accept
    ``top_k``, ``min_score``, ``used_min_score``, ``used_min_share``, ``rule`` and ``id_key`` as keyword
    arguments, overriding the constructor's values for that call (``step.bind(top_k=1)``). Other
    keywords are ignored with a ``UserWarning``, as LangChain's prompts and parsers ignore keywords
    they do not take.

    Args:
        model, proxy, strategy, device, dtype, template, attributor, attributor_kwargs: the
            scoring model (see :class:`~langchain_attribot._settings.ScorerSettings`); ``dtype``
            may be a ``torch.dtype`` or a name such as ``"fp32"``/``"bf16"``.
        prompt: the chain's ``ChatPromptTemplate`` (or a ``ChainPrompt``) to score under (see
            above); ``template`` then only gives its other settings (``chat``, ``plain``). Not with
            ``attributor=``.
        top_k: keep the best ``top_k`` citations (``None``: every citation the rule keeps).
        min_score: an extra cut-off on top of the rule: keep citations scoring above this many nats.
        rule: the :class:`~attribot_rag.decisions.DecisionRule` behind every verdict (``None``:
            the core's ``DEFAULT_RULE``).
        used_min_score / used_min_share: overrides of the rule's ``min_loo`` / ``min_share``
            (``used_min_share=None`` disables the share check); left unset, the rule's own values.
        question_key / documents_key / answer_key: name the input keys explicitly.
        id_key: metadata key to read a document's id from when ``Document.id`` is ``None``.
        history_key: the key holding earlier chat turns (default: ``chat_history`` or ``history``
            when present). They are scored as context before the question, never cited.
        history_messages: keep only the latest this many history messages (``None``: all).
        citations_key / used_context_key / cited_answer_key / summary_key: output key names.
        stream_input: in ``stream``, pass input chunks through (``False``: yield one final chunk).

    Raises:
        ConfigError: at construction, for a bad setting (unknown strategy, bad dtype or device,
            negative ``top_k``, non-finite score threshold, ...), before any chain runs.
    """

    # per-call keyword -> CiteOptions field
    _CALL_OPTIONS: ClassVar[Mapping[str, str]] = {
        "top_k": "top_k", "min_score": "min_score", "used_min_score": "used_min_score",
        "used_min_share": "used_min_share", "id_key": "id_key", "rule": "rule",
    }

    def __init__(
        self,
        model: ModelLike = DEFAULT_MODEL,
        *,
        proxy: ModelLike | None = None,
        strategy: Any = "auto",
        device: str | None = None,
        dtype: Any = None,
        template: PromptTemplate | None = None,
        attributor: Attributor | None = None,
        attributor_kwargs: dict[str, Any] | None = None,
        prompt: ChatPromptTemplate | ChainPrompt | None = None,
        top_k: int | None = 5,
        min_score: float = 0.0,
        used_min_score: float = UNSET,
        used_min_share: float | None = UNSET,
        rule: DecisionRule | None = None,
        question_key: str | None = None,
        documents_key: str | None = None,
        answer_key: str | None = None,
        id_key: str | None = None,
        history_key: str | None = None,
        history_messages: int | None = None,
        citations_key: str = "citations",
        used_context_key: str = "used_context",
        cited_answer_key: str = "cited_answer",
        summary_key: str = "attribot",
        stream_input: bool = True,
    ) -> None:
        self.scorer = ScorerSettings(model, proxy, strategy, device, dtype, template, attributor,
                                     dict(attributor_kwargs or {}))
        self.options = CiteOptions(top_k, min_score, used_min_score, used_min_share, id_key, rule)
        self.prompt = as_chain_prompt(prompt, attributor)
        self.question_key = question_key
        self.documents_key = documents_key
        self.answer_key = answer_key
        self.history_key = history_key
        self.history_messages = check_history_messages(history_messages)
        self.citations_key = citations_key
        self.used_context_key = used_context_key
        self.cited_answer_key = cited_answer_key
        self.summary_key = summary_key
        self.stream_input = stream_input

    def __repr__(self) -> str:
        return f"AttribotCitations({self.scorer.describe()}, top_k={self.options.top_k})"

    @property
    def attributor(self) -> Attributor:
        """The shared attributor (loads the model on first access)."""
        return self.scorer.resolve()

    # ------------------------------------------------------------------ core
    def cite(self, values: Mapping[str, Any], options: CiteOptions | None = None) -> Cited:
        """Cite the answer in ``values`` (blocking). The Runnable methods wrap this.

        ``options`` replaces the constructor's citation options for this call.
        """
        if not isinstance(values, Mapping):
            raise ChainInputError(
                f"the citation step takes the chain's dict (question, documents, answer), got a "
                f"{type(values).__name__}: build the dict with RunnableParallel / RunnablePassthrough.assign"
            )
        agent = None
        if self.question_key is None and not any(k in values for k in QUESTION_KEYS):
            agent = conversation(values)  # an agent's state: {"messages": [...]}
        if agent is not None:
            question, answer, history = agent
            if self.answer_key is not None or any(k in values for k in ANSWER_KEYS):
                answer = values[pick_key(values, self.answer_key, ANSWER_KEYS, "answer")]
        else:
            qk = pick_key(values, self.question_key, QUESTION_KEYS, "question")
            question = question_text(values[qk], qk)
            answer = values[pick_key(values, self.answer_key, ANSWER_KEYS, "answer")]
            history = scoring_history(self.prompt, values, self.history_key, self.history_messages)
        found = tool_documents(values, [k for k in (self.history_key,) if k])
        if found and self.documents_key is None and not any(k in values for k in DOCUMENTS_KEYS):
            documents = found
        else:
            dk = pick_key(values, self.documents_key, DOCUMENTS_KEYS, "documents (retrieved Documents)")
            documents = merge_documents(check_documents(values[dk], dk), found)
        options = options if options is not None else self.options
        return cite(scoring_attributor(self.scorer, self.prompt, values), question, documents, answer, options,
                    history)

    def _options(self, kwargs: Mapping[str, Any]) -> CiteOptions:
        return call_options(self.options, kwargs, self._CALL_OPTIONS, type(self).__name__)

    def _additions(self, values: Mapping[str, Any], options: CiteOptions | None = None) -> dict[str, Any]:
        cited = self.cite(values, options)  # checks that ``values`` is a mapping
        out: dict[str, Any] = {self.citations_key: cited.citations, self.used_context_key: cited.used_context,
                               self.summary_key: cited.summary}
        if cited.cited_answer is not None:
            out[self.cited_answer_key] = cited.cited_answer
        return out

    def _invoke(self, values: dict[str, Any], options: CiteOptions | None = None) -> dict[str, Any]:
        additions = self._additions(values, options)
        return {**values, **additions}

    async def _ainvoke(self, values: dict[str, Any], options: CiteOptions | None = None) -> dict[str, Any]:
        return await run_in_executor(None, self._invoke, values, options)

    # ------------------------------------------------------------------ Runnable interface
    def invoke(self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any) -> dict[str, Any]:
        """Return ``input`` with the citations added; ``kwargs`` override options (see the class docstring)."""
        # kwargs are resolved here, not forwarded: the inner functions take only the options
        return self._call_with_config(self._invoke, input, config, options=self._options(kwargs))

    async def ainvoke(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Async :meth:`invoke`; the model work runs in a worker thread."""
        return await self._acall_with_config(self._ainvoke, input, config, options=self._options(kwargs))

    def _merge(self, final: AddableDict | None, chunk: Any) -> AddableDict:
        if not isinstance(chunk, Mapping):
            raise ChainInputError(
                f"the citation step streams dict chunks, got a {type(chunk).__name__}: "
                "put it after a step that outputs the chain's dict"
            )
        return AddableDict(chunk) if final is None else final + AddableDict(chunk)

    def _transform(
        self, chunks: Iterator[dict[str, Any]], options: CiteOptions | None = None
    ) -> Iterator[dict[str, Any]]:
        final: AddableDict | None = None
        for chunk in chunks:
            final = self._merge(final, chunk)
            if self.stream_input:
                yield AddableDict(chunk)
        if final is None:
            raise ChainInputError("the citation step received no input")
        additions = self._additions(final, options)
        yield AddableDict(additions if self.stream_input else {**final, **additions})

    async def _atransform(
        self, chunks: AsyncIterator[dict[str, Any]], options: CiteOptions | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        final: AddableDict | None = None
        async for chunk in chunks:
            final = self._merge(final, chunk)
            if self.stream_input:
                yield AddableDict(chunk)
        if final is None:
            raise ChainInputError("the citation step received no input")
        additions = await run_in_executor(None, self._additions, final, options)
        yield AddableDict(additions if self.stream_input else {**final, **additions})

    def transform(
        self, input: Iterator[dict[str, Any]], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        """Pass input chunks through as they arrive, then yield the citations (``kwargs``: as :meth:`invoke`)."""
        yield from self._transform_stream_with_config(input, self._transform, config, options=self._options(kwargs))

    async def atransform(
        self, input: AsyncIterator[dict[str, Any]], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Async :meth:`transform`; the model work runs in a worker thread."""
        options = self._options(kwargs)
        async for chunk in self._atransform_stream_with_config(input, self._atransform, config, options=options):
            yield chunk

    def stream(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        """Stream: the input (one chunk), then the citations; the chunks add up to :meth:`invoke`."""
        yield from self.transform(iter([input]), config, **kwargs)

    async def astream(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Async :meth:`stream`."""

        async def one() -> AsyncIterator[dict[str, Any]]:
            yield input

        async for chunk in self.atransform(one(), config, **kwargs):
            yield chunk
