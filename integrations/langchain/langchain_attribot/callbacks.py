"""A callback handler that cites the answers of chains you cannot rewire."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from attribot_rag import DEFAULT_MODEL, Attributor, ConfigError, PromptTemplate
from attribot_rag.decisions import UNSET, DecisionRule
from attribot_rag.errors import is_count
from langchain_core.callbacks import BaseCallbackHandler, dispatch_custom_event
from langchain_core.documents import Document
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables.config import var_child_runnable_config

from ._convert import (
    ANSWER_KEYS,
    QUESTION_KEYS,
    CiteOptions,
    check_documents,
    check_history_messages,
    cite,
    question_text,
)
from ._models import ModelLike
from ._settings import ScorerSettings
from .errors import ChainInputError, CitationsNotReadyError
from .prompts import ChainPrompt, as_chain_prompt, scoring_attributor, scoring_history

logger = logging.getLogger(__name__)

EVENT_NAME = "attribot_citations"


@dataclass
class _RunState:
    """What one top-level run has shown so far."""

    inputs: Any = None
    query: str | None = None  # the first retriever query
    retrieved: list[tuple[UUID, list[Document]]] = field(default_factory=list)  # per retriever run, by end
    parents: dict[UUID, UUID | None] = field(default_factory=dict)  # run id -> parent run id
    answer: Any = None  # the last model output
    callbacks: Any = None  # the callback manager of the root's children (for the custom event)
    runs: set[UUID] = field(default_factory=set)


class AttribotCallbackHandler(BaseCallbackHandler):
    """Cite the answer of a chain from its callbacks, without changing the chain.

    Attach it to a call (``chain.invoke(x, config={"callbacks": [handler]})``) or to the chain
    (``chain.with_config(callbacks=[handler])``). It follows the run tree by
    ``run_id``/``parent_run_id``: for each top-level run it collects the documents every
    retriever returned (``on_retriever_end``), the last model output (``on_llm_end``; chat
    model runs are tracked from ``on_chat_model_start``) and the question (the top-level
    input's ``question``/``input``/``query`` key, a plain string input, or else the first
    retriever query). When the top-level run ends it computes the citations and stores them
    by that run's id::

        handler = AttribotCallbackHandler()
        out = chain.invoke("Who built the Eiffel Tower?", config={"callbacks": [handler]})
        handler.get(handler.latest_run_id)["citations"]

    Each record holds ``question``, ``answer``, ``documents``, ``citations``,
    ``used_context``, ``cited_answer`` (for message answers; else ``None``) and ``summary``
    (the same values :class:`~langchain_attribot.AttribotCitations` adds; ``summary`` holds
    ``supported``, ``answer_sentences`` and ``noise``). The record is also
    dispatched as a custom event named ``"attribot_citations"`` to the run's callback handlers
    (their ``on_custom_event``), with the top-level run's id as ``run_id``; this needs the
    top-level run to have had a child step (every LCEL sequence does).

    What a callback can change, and what it cannot:

    * It **cannot** change the chain's output, its inputs or its control flow: LangChain
      ignores callback return values. The answer the caller receives carries no citations;
      read them from this handler (or the custom event) instead. To put citations *in* the
      output, use :class:`~langchain_attribot.AttribotCitations` as a chain step.
    * It **cannot** cite before the top-level run ends, nor stream citations; the answer
      streams to the caller as usual.
    * It **does** add latency at the end of the run: LangChain runs a synchronous handler
      inline, so ``invoke`` returns once the citations are computed (in async chains it runs
      in a worker thread and does not block the event loop).
    * Errors (no documents, documents without ids, empty answer) do not break the chain
      (LangChain logs and swallows handler errors unless ``raise_error=True``); they are stored
      and re-raised by :meth:`get` for that run id.
    * It only sees documents that pass through a retriever's callbacks; documents fetched
      inside a plain function are invisible to it.

    Args:
        model, proxy, strategy, device, dtype, template, attributor, attributor_kwargs: the
            scoring model (see :class:`~langchain_attribot._settings.ScorerSettings`); the same
            settings as an ``AttribotCitations`` share its loaded model.
        prompt: the chain's ``ChatPromptTemplate`` (or a ``ChainPrompt``) to score under, as in
            ``AttribotCitations``: its other variables and its history placeholder are read from
            the top-level input (a dict). Not with ``attributor=``.
        top_k / min_score / used_min_score / used_min_share / rule / id_key: as in ``AttribotCitations``
            (every verdict comes from the core's decision rule, ``DEFAULT_RULE`` unless ``rule`` is given).
        question_key: the top-level input key holding the question (default: auto-detected).
        history_key / history_messages: earlier chat turns in the top-level input (default:
            ``chat_history`` or ``history`` when present), scored as context as in ``AttribotCitations``.
        event_name: the custom event's name (``None``: dispatch no event).
        max_results: keep the records of this many most recent runs.
        raise_error: let errors propagate out of the chain instead of storing them.

    Raises:
        ConfigError: at construction, for a bad setting (unknown strategy, bad dtype or device,
            negative ``top_k``, non-finite score threshold, ``max_results < 1``, ...).
    """

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
        id_key: str | None = None,
        question_key: str | None = None,
        history_key: str | None = None,
        history_messages: int | None = None,
        event_name: str | None = EVENT_NAME,
        max_results: int = 1000,
        raise_error: bool = False,
    ) -> None:
        super().__init__()
        if not is_count(max_results, 1):
            raise ConfigError(f"max_results={max_results!r}: pass how many runs' records to keep (an int >= 1)")
        self.scorer = ScorerSettings(model, proxy, strategy, device, dtype, template, attributor,
                                     dict(attributor_kwargs or {}))
        self.options = CiteOptions(top_k, min_score, used_min_score, used_min_share, id_key, rule)
        self.prompt = as_chain_prompt(prompt, attributor)
        self.question_key = question_key
        self.history_key = history_key
        self.history_messages = check_history_messages(history_messages)
        self.event_name = event_name
        self.max_results = max_results
        self.raise_error = raise_error
        self.results: OrderedDict[UUID, dict[str, Any]] = OrderedDict()
        self.errors: OrderedDict[UUID, Exception] = OrderedDict()
        self.latest_run_id: UUID | None = None
        self._lock = threading.Lock()
        self._root: dict[UUID, UUID] = {}  # run id -> its top-level run id
        self._states: dict[UUID, _RunState] = {}

    def __repr__(self) -> str:
        return f"AttribotCallbackHandler({self.scorer.describe()}, runs={len(self.results)})"

    # ------------------------------------------------------------------ results
    def get(self, run_id: UUID | str) -> dict[str, Any]:
        """The citation record of the top-level run ``run_id``; re-raises its error if it failed."""
        rid = UUID(str(run_id))
        with self._lock:
            if rid in self.results:
                return self.results[rid]
            if rid in self.errors:
                raise self.errors[rid]
        raise CitationsNotReadyError(
            f"no citations for run {rid}: it has not ended, is not a top-level run this handler saw, "
            f"or was evicted (max_results={self.max_results})"
        )

    @property
    def latest(self) -> dict[str, Any]:
        """The record of the most recently finished top-level run."""
        if self.latest_run_id is None:
            raise CitationsNotReadyError("no top-level run has finished yet")
        return self.get(self.latest_run_id)

    # ------------------------------------------------------------------ run tree
    def _enter(self, run_id: UUID, parent_run_id: UUID | None) -> _RunState:
        """Register a starting run under its top-level run; returns that run's state."""
        with self._lock:
            root = self._root.get(parent_run_id) if parent_run_id is not None else None
            if root is None or root not in self._states:  # a top-level run (or one whose parent we never saw)
                root = run_id
                self._states[root] = _RunState()
            state = self._states[root]
            self._root[run_id] = root
            state.runs.add(run_id)
            state.parents[run_id] = parent_run_id
            if parent_run_id == root and state.callbacks is None:
                # While a direct child starts, the context holds the root's child callback manager.
                config = var_child_runnable_config.get()
                manager = (config or {}).get("callbacks")
                if getattr(manager, "parent_run_id", None) == root:
                    state.callbacks = manager
            return state

    def _state(self, run_id: UUID) -> _RunState | None:
        with self._lock:
            root = self._root.get(run_id)
            return self._states.get(root) if root is not None else None

    def on_chain_start(
        self, serialized: dict[str, Any] | None, inputs: Any, *, run_id: UUID,
        parent_run_id: UUID | None = None, **kwargs: Any,
    ) -> None:
        """Track the run; a top-level run's inputs give the question."""
        state = self._enter(run_id, parent_run_id)
        if state.runs == {run_id}:
            state.inputs = inputs

    def on_chat_model_start(
        self, serialized: dict[str, Any] | None, messages: list[list[BaseMessage]], *, run_id: UUID,
        parent_run_id: UUID | None = None, **kwargs: Any,
    ) -> None:
        """Track a chat model run (its ``on_llm_end`` holds the answer)."""
        self._enter(run_id, parent_run_id)

    def on_llm_start(
        self, serialized: dict[str, Any] | None, prompts: list[str], *, run_id: UUID,
        parent_run_id: UUID | None = None, **kwargs: Any,
    ) -> None:
        """Track a completion model run."""
        self._enter(run_id, parent_run_id)

    def on_tool_start(
        self, serialized: dict[str, Any] | None, input_str: str, *, run_id: UUID,
        parent_run_id: UUID | None = None, **kwargs: Any,
    ) -> None:
        """Track a tool run (keeps the run tree whole)."""
        self._enter(run_id, parent_run_id)

    def on_retriever_start(
        self, serialized: dict[str, Any] | None, query: str, *, run_id: UUID,
        parent_run_id: UUID | None = None, **kwargs: Any,
    ) -> None:
        """Track a retriever run; its query is the fallback question."""
        state = self._enter(run_id, parent_run_id)
        with self._lock:
            if state.query is None and isinstance(query, str) and query.strip():
                state.query = query

    def on_retriever_end(
        self, documents: Sequence[Document], *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        """Collect the documents this retriever run returned (merged when the run ends)."""
        state = self._state(run_id)
        if state is None:
            return
        with self._lock:
            state.retrieved.append((run_id, list(documents)))
        self._end_leaf(run_id)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, parent_run_id: UUID | None = None,
                   **kwargs: Any) -> None:
        """Keep the model's output: the last one before the top-level run ends is the answer."""
        state = self._state(run_id)
        if state is not None and response.generations and response.generations[0]:
            gen = response.generations[0][0]
            with self._lock:
                state.answer = gen.message if isinstance(gen, ChatGeneration) else gen.text
        self._end_leaf(run_id)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Forget a failed top-level model run."""
        self._end_leaf(run_id)

    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Forget a failed top-level retriever run."""
        self._end_leaf(run_id)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """Forget a finished top-level tool run."""
        self._end_leaf(run_id)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Forget a failed top-level tool run."""
        self._end_leaf(run_id)

    def _end_leaf(self, run_id: UUID) -> None:
        """A model, retriever or tool run that was itself top-level: nothing to cite, drop its state."""
        with self._lock:
            if self._root.get(run_id) == run_id:
                self._close(run_id)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        """When a top-level run ends, compute and store its citations."""
        with self._lock:
            if self._root.get(run_id) != run_id:
                return
            state = self._close(run_id)
        self._finish(run_id, state, outputs, kwargs.get("inputs"))

    def on_chain_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        """A failed top-level run is forgotten (nothing to cite)."""
        with self._lock:
            if self._root.get(run_id) == run_id:
                self._close(run_id)

    def _close(self, root: UUID) -> _RunState:
        state = self._states.pop(root)
        for rid in state.runs:
            self._root.pop(rid, None)
        return state

    # ------------------------------------------------------------------ citing
    def _question(self, state: _RunState, inputs: Any) -> str:
        if isinstance(inputs, (str, BaseMessage)):
            try:
                return question_text(inputs)
            except ChainInputError:
                pass
        if isinstance(inputs, Mapping):
            keys = (self.question_key,) if self.question_key else QUESTION_KEYS
            for k in keys:
                value = inputs.get(k)
                if isinstance(value, (str, BaseMessage)) and str(getattr(value, "text", value)).strip():
                    return question_text(value, k)
        if state.query:
            return state.query
        raise ChainInputError(
            "could not find the question: the top-level input has no 'question'/'input'/'query' key and no "
            "retriever query was seen; pass question_key=... or invoke the chain with the question"
        )

    @staticmethod
    def _answer(state: _RunState, outputs: Any) -> Any:
        if state.answer is not None:
            return state.answer
        if isinstance(outputs, (str, BaseMessage)):
            return outputs
        if isinstance(outputs, Mapping):
            for k in ANSWER_KEYS:
                if k in outputs:
                    return outputs[k]
        raise ChainInputError("the run produced no answer: no model ran under it and its output holds none")

    def _documents(self, state: _RunState) -> list[Document]:
        """What the outermost retrievers returned, de-duplicated by id (``id_key`` for id-less ones).

        A retriever that wraps another (compression, re-ranking, filtering) reports its inner
        retriever's candidates too; only its own, final list reached the prompt.
        """
        retrievers = {rid for rid, _ in state.retrieved}

        def nested(rid: UUID) -> bool:
            parent = state.parents.get(rid)
            while parent is not None:
                if parent in retrievers:
                    return True
                parent = state.parents.get(parent)
            return False

        out, seen = [], set()
        for rid, docs in state.retrieved:
            if nested(rid):
                continue
            for d in docs:
                key = d.id if d.id is not None or not self.options.id_key else d.metadata.get(self.options.id_key)
                key = None if key is None else str(key)  # as document_ids reads it
                if key is None or key not in seen:
                    out.append(d)
                    if key is not None:
                        seen.add(key)
        return out

    def _finish(self, run_id: UUID, state: _RunState, outputs: Any, end_inputs: Any) -> None:
        try:
            retrieved = self._documents(state)
            if not retrieved:
                raise ChainInputError(
                    "no documents to cite: no retriever returned documents in this run (the handler reads "
                    "them from on_retriever_end; documents fetched outside a retriever are invisible to it)"
                )
            # the top-level input: a streamed run starts with a placeholder ({"input": ""}) and ends with the real one
            inputs = end_inputs if end_inputs is not None else state.inputs
            question = self._question(state, inputs)
            answer = self._answer(state, outputs)
            documents = check_documents(retrieved, "retrieved documents")
            history = scoring_history(self.prompt, inputs, self.history_key, self.history_messages)
            attributor = scoring_attributor(self.scorer, self.prompt, inputs)
            cited = cite(attributor, question, documents, answer, self.options, history)
        except Exception as exc:
            with self._lock:
                self.errors[run_id] = exc
                self._trim(self.errors)
                self.latest_run_id = run_id
            if self.raise_error:
                raise
            logger.warning("attribot: no citations for run %s: %s", run_id, exc)
            return
        record = {
            "run_id": str(run_id), "question": question, "answer": answer, "documents": documents,
            "citations": cited.citations, "used_context": cited.used_context, "cited_answer": cited.cited_answer,
            "summary": cited.summary,
        }
        with self._lock:
            self.results[run_id] = record
            self._trim(self.results)
            self.latest_run_id = run_id
        if self.event_name and state.callbacks is not None:
            try:
                dispatch_custom_event(self.event_name, record, config={"callbacks": state.callbacks})
            except Exception as exc:  # an observer's failure must not lose the stored record
                logger.warning("attribot: could not dispatch the %r event: %s", self.event_name, exc)

    def _trim(self, table: OrderedDict) -> None:
        while len(table) > self.max_results:
            table.popitem(last=False)
