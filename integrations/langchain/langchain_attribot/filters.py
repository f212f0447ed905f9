"""Post-generation filter: keep only the retrieved documents the answer used."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from attribot_rag import DEFAULT_MODEL, Attributor, PromptTemplate
from attribot_rag.decisions import UNSET, DecisionRule
from langchain_core.documents import Document
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import run_in_executor

from ._convert import (
    ANSWER_KEYS,
    DOCUMENTS_KEYS,
    QUESTION_KEYS,
    CiteOptions,
    call_options,
    chain_history,
    check_documents,
    check_history_messages,
    cite,
    pick_key,
    question_text,
)
from ._models import ModelLike
from ._settings import ScorerSettings
from .errors import ChainInputError


class AttribotDocumentFilter(Runnable[dict[str, Any], list[Document]]):
    """Given the answer, return only the documents it used (after generation, not before).

    A retriever's relevance score says what *looks* related to the question; this filter asks
    what the *answer* relied on. A document is kept when the core's decision rule
    (:mod:`attribot_rag.decisions`, ``DEFAULT_RULE`` unless ``rule`` is given) calls it used: the
    retrieved context supports the answer at all, and the document is evidence for it (removing
    it drops the answer's log-likelihood under the local scoring model by more than the rule's
    ``min_loo`` nats and ``min_share`` of the total positive drop, or it alone raises the answer's
    likelihood by the rule's ``min_sufficiency``). An answer the documents do not support keeps
    none. Use it to show "sources" under an answer, to log what was actually used, or to prune
    context for a follow-up turn.

    As a Runnable it takes the chain's dict (question, ``Document`` list, answer; keys as in
    :class:`~langchain_attribot.AttribotCitations`) and returns the kept documents: copies,
    in retrieval order, with ``attribot_score`` and ``attribot_share`` in their metadata::

        used = AttribotDocumentFilter().invoke(
            {"question": q, "context": docs, "answer": answer_text}
        )

    or call :meth:`filter_documents` directly. The default strategy, ``"documents"``, scores
    whole documents only (one forward pass per document), which is all a filter needs.

    Per-call options: ``invoke``/``ainvoke``/``batch`` (and ``.bind(...)``) accept ``min_score``,
    ``min_share``, ``rule`` and ``id_key`` as keyword arguments, overriding the constructor's values for
    that call (``filter.bind(min_share=0.3)``). Other keywords are ignored with a ``UserWarning``,
    as LangChain's prompts and parsers ignore keywords they do not take.

    Args:
        model, proxy, strategy, device, dtype, template, attributor, attributor_kwargs: the
            scoring model (see :class:`~langchain_attribot._settings.ScorerSettings`).
        rule: the :class:`~attribot_rag.decisions.DecisionRule` deciding "used" (``None``: the
            core's ``DEFAULT_RULE``).
        min_score: override of the rule's ``min_loo`` (least leave-one-out score, nats); left
            unset, the rule's own value.
        min_share: override of the rule's ``min_share`` (least share of the total positive
            score; ``None`` disables the share check); left unset, the rule's own value.
        question_key / documents_key / answer_key / id_key / history_key / history_messages: as in
            ``AttribotCitations`` (the answer is scored in its conversation, as there).

    Raises:
        ConfigError: at construction, for a bad setting (unknown strategy, bad dtype or device,
            non-finite ``min_score``, ``min_share`` outside [0, 1], ...), before any chain runs.
    """

    # per-call keyword -> CiteOptions field
    _CALL_OPTIONS: ClassVar[Mapping[str, str]] = {
        "min_score": "used_min_score", "min_share": "used_min_share", "id_key": "id_key", "rule": "rule",
    }

    def __init__(
        self,
        model: ModelLike = DEFAULT_MODEL,
        *,
        proxy: ModelLike | None = None,
        strategy: Any = "documents",
        device: str | None = None,
        dtype: Any = None,
        template: PromptTemplate | None = None,
        attributor: Attributor | None = None,
        attributor_kwargs: dict[str, Any] | None = None,
        min_score: float = UNSET,
        min_share: float | None = UNSET,
        rule: DecisionRule | None = None,
        question_key: str | None = None,
        documents_key: str | None = None,
        answer_key: str | None = None,
        id_key: str | None = None,
        history_key: str | None = None,
        history_messages: int | None = None,
    ) -> None:
        self.scorer = ScorerSettings(model, proxy, strategy, device, dtype, template, attributor,
                                     dict(attributor_kwargs or {}))
        self.options = CiteOptions(top_k=0, used_min_score=min_score, used_min_share=min_share, id_key=id_key,
                                   rule=rule)
        self.question_key = question_key
        self.documents_key = documents_key
        self.answer_key = answer_key
        self.history_key = history_key
        self.history_messages = check_history_messages(history_messages)

    def __repr__(self) -> str:
        rule = self.options.resolved_rule()
        return f"AttribotDocumentFilter({self.scorer.describe()}, min_score={rule.min_loo}, min_share={rule.min_share})"

    def filter_documents(
        self, documents: Sequence[Document], question: str | BaseMessage, answer: str | BaseMessage
    ) -> list[Document]:
        """The documents ``answer`` used (blocking; copies with scores in their metadata)."""
        docs = check_documents(documents, "documents")
        return cite(self.scorer.resolve(), question_text(question), docs, answer, self.options).used_context

    async def afilter_documents(
        self, documents: Sequence[Document], question: str | BaseMessage, answer: str | BaseMessage
    ) -> list[Document]:
        """Async :meth:`filter_documents`; the model work runs in a worker thread."""
        return await run_in_executor(None, self.filter_documents, documents, question, answer)

    def _from_values(self, values: Mapping[str, Any], options: CiteOptions | None = None) -> list[Document]:
        if not isinstance(values, Mapping):
            raise ChainInputError(
                f"the filter takes the chain's dict (question, documents, answer), got a {type(values).__name__}"
            )
        qk = pick_key(values, self.question_key, QUESTION_KEYS, "question")
        dk = pick_key(values, self.documents_key, DOCUMENTS_KEYS, "documents (retrieved Documents)")
        ak = pick_key(values, self.answer_key, ANSWER_KEYS, "answer")
        docs = check_documents(values[dk], dk)
        history = chain_history(values, self.history_key, self.history_messages)
        options = options if options is not None else self.options
        question = question_text(values[qk], qk)
        return cite(self.scorer.resolve(), question, docs, values[ak], options, history).used_context

    async def _afrom_values(self, values: Mapping[str, Any], options: CiteOptions | None = None) -> list[Document]:
        return await run_in_executor(None, self._from_values, values, options)

    def _options(self, kwargs: Mapping[str, Any]) -> CiteOptions:
        return call_options(self.options, kwargs, self._CALL_OPTIONS, type(self).__name__)

    def invoke(self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any) -> list[Document]:
        """The used documents of the chain's dict; ``kwargs`` override options (see the class docstring)."""
        # kwargs are resolved here, not forwarded: the inner functions take only the options
        return self._call_with_config(self._from_values, input, config, options=self._options(kwargs))

    async def ainvoke(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> list[Document]:
        """Async :meth:`invoke`; the model work runs in a worker thread."""
        return await self._acall_with_config(self._afrom_values, input, config, options=self._options(kwargs))
