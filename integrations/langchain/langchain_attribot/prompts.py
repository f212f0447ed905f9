"""Score under the prompt the chain ran: a LangChain ``ChatPromptTemplate`` as the scorer's prompt.

The scorer measures how much each document raises the answer's likelihood *under a prompt*. A
chain that puts its documents in the system message and the question in a human message shows
the model a different prompt than attribot-rag's fixed template (documents, instruction and
question in one user turn), and the scores, even which document is "used", can differ.
:class:`ChainPrompt` renders the chain's own ``ChatPromptTemplate`` into the core's
``PromptTemplate(messages=...)``: the same messages, the question and history where the chain puts
them, and the documents variable filled by the documents as :meth:`ChainPrompt.format_documents`
writes them, so that each document's text can be removed from that slot (leave-one-out).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from attribot_rag import Attributor, ConfigError, PromptTemplate, Source
from attribot_rag.result import jsonable
from langchain_core.documents import Document
from langchain_core.messages import HumanMessage, convert_to_openai_messages
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough

from ._convert import DOCUMENTS_KEYS, HISTORY_KEYS, QUESTION_KEYS, chain_history
from ._settings import ScorerSettings
from .errors import ChainInputError

_DOCS = "\x00ATTRIBOT_DOCUMENTS\x00"
_QUESTION = "\x00ATTRIBOT_QUESTION\x00"
_HISTORY = "\x00ATTRIBOT_HISTORY\x00"
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _one(found: list[str], what: str, option: str, required: bool) -> str | None:
    if len(found) > 1:
        raise ConfigError(f"the chat prompt has several {what} variables ({found}): name the one with {option}=...")
    if not found and required:
        raise ConfigError(f"the chat prompt has no {what} variable (looked for {list(DOCUMENTS_KEYS)}): name the "
                          f"variable the chain fills with the formatted documents with {option}=...")
    return found[0] if found else None


@dataclass(frozen=True)
class ChainPrompt:
    """A chain's ``ChatPromptTemplate``, for scoring the answer under the prompt the chain ran.

    Args:
        prompt: the chain's ``ChatPromptTemplate``.
        documents_variable: the prompt variable the chain fills with the formatted documents
            (default: the one of ``context``, ``documents``, ``docs``, ``source_documents`` the prompt has).
        question_variable: the variable holding the question (default: the one of ``question``,
            ``input``, ``query`` the prompt has; none: the prompt shows no question).
        history_variable: the ``MessagesPlaceholder`` holding earlier turns (default: one named
            ``chat_history`` or ``history``; none: the prompt shows no history, so none is scored).
        document: how each document is written into the documents variable, attribot-rag's
            ``PromptTemplate.document`` (``{text}``: the page content, stripped; ``{title}``: " " +
            ``metadata["title"]`` or ""; ``{index}``: its 1-based position); documents are joined by
            a blank line. The default ``"{text}"`` is LangChain's own default (``create_stuff_documents_chain``
            writes ``page_content`` joined by ``"\\n\\n"``). For the scores to be the chain's, the chain
            must fill the variable with :meth:`format_documents` (as :func:`create_cited_rag_chain` does).

    Any other variable of the prompt is read from the citation step's input at each call.

    Raises:
        ConfigError: a prompt that is not a ``ChatPromptTemplate``, a variable it does not have,
            several candidates for one, a ``document`` template that does not format, or a prompt
            whose messages the scorer cannot render (a role other than system/user/assistant).
    """

    prompt: ChatPromptTemplate
    documents_variable: str | None = None
    question_variable: str | None = None
    history_variable: str | None = None
    document: str = "{text}"
    _static: tuple[tuple[str, str], ...] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        prompt = self.prompt
        if not isinstance(prompt, ChatPromptTemplate):
            raise ConfigError(f"prompt={type(prompt).__name__}: pass the chain's langchain_core ChatPromptTemplate "
                              "(or a ChainPrompt)")
        names = [*prompt.input_variables, *getattr(prompt, "optional_variables", [])]
        placeholders = [m.variable_name for m in prompt.messages if isinstance(m, MessagesPlaceholder)]
        for option in ("documents_variable", "question_variable", "history_variable"):
            value = getattr(self, option)
            if value is not None and value not in names:
                raise ConfigError(f"{option}={value!r}, but the chat prompt's variables are {sorted(names)}")
        docs = self.documents_variable or _one([v for v in DOCUMENTS_KEYS if v in names and v not in placeholders],
                                               "documents", "documents_variable", True)
        question = self.question_variable or _one([v for v in QUESTION_KEYS if v in names], "question",
                                                  "question_variable", False)
        history = self.history_variable or _one([v for v in HISTORY_KEYS if v in placeholders], "history",
                                                "history_variable", False)
        if docs in placeholders or (history is not None and history not in placeholders):
            raise ConfigError("the documents variable must be a text variable and the history variable a "
                              "MessagesPlaceholder of the chat prompt")
        try:
            self.document.format(index=1, title="", text="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"document={self.document!r} does not format with {{text}}, {{title}} and "
                              f"{{index}} ({exc!r})") from exc
        object.__setattr__(self, "documents_variable", docs)
        object.__setattr__(self, "question_variable", question)
        object.__setattr__(self, "history_variable", history)
        if not self.extra_variables:  # the scoring prompt is the same every call: render and check it now
            object.__setattr__(self, "_static", self._messages({}))
        PromptTemplate(document=self.document, messages=self._static or self._messages(None))

    @property
    def extra_variables(self) -> list[str]:
        """The prompt's other variables, read from the citation step's input at each call."""
        own = {self.documents_variable, self.question_variable, self.history_variable}
        return [v for v in self.prompt.input_variables if v not in own]

    def _messages(self, values: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
        """The prompt's messages with the documents, question and history slots marked; ``values``
        fill the other variables (``None``: placeholders, to check the prompt at construction)."""
        kwargs: dict[str, Any] = {self.documents_variable: _DOCS}
        if self.question_variable is not None:
            kwargs[self.question_variable] = _QUESTION
        if self.history_variable is not None:
            kwargs[self.history_variable] = [HumanMessage(_HISTORY)]
        for name in self.extra_variables:
            if values is None:
                kwargs[name] = "" if name not in self._placeholders else []
            elif name in values:
                kwargs[name] = values[name]
            else:
                raise ChainInputError(f"the chat prompt needs {name!r}, which the chain's input lacks "
                                      f"(keys: {sorted(map(str, values))}): keep it in the chain's dict")
        out = []
        for i, m in enumerate(convert_to_openai_messages(self.prompt.format_messages(**kwargs), text_format="string")):
            role, content = m.get("role"), m.get("content")
            if role == "user" and content == _HISTORY:
                out.append(("history", ""))
                continue
            if role in ("tool", "function") or (role == "assistant" and not content):
                continue  # tool traffic: a tool's documents are sources (ToolMessage artifacts), not prompt text
            if role not in _ROLES or not isinstance(content, str):
                raise ConfigError(f"the chat prompt's message {i} has role {role!r}: the scorer renders system, "
                                  "user and assistant messages with text content")
            text = content.replace("{", "{{").replace("}", "}}")
            out.append((_ROLES[role], text.replace(_DOCS, "{documents}").replace(_QUESTION, "{question}")))
        shown = sum(text.count("{documents}") for _, text in out)
        if shown != 1:
            raise ConfigError(f"the chat prompt shows the documents variable {self.documents_variable!r} {shown} "
                              "times once rendered: the scorer needs it exactly once (the slot it ablates)")
        return tuple(out)

    @property
    def _placeholders(self) -> set[str]:
        return {m.variable_name for m in self.prompt.messages if isinstance(m, MessagesPlaceholder)}

    def template(self, values: Mapping[str, Any] | None = None, base: PromptTemplate | None = None) -> PromptTemplate:
        """The core ``PromptTemplate`` that renders this prompt (``values``: the step's input, for the
        prompt's other variables); ``base`` gives the other settings (``chat``, ``plain``, ...)."""
        messages = self._static if self._static is not None else self._messages(values or {})
        return dataclasses.replace(base or PromptTemplate(), document=self.document, messages=messages, system=None)

    def format_documents(self, documents: Sequence[Document]) -> str:
        """The documents as the scorer writes them into the documents variable: fill the chain's
        variable with this, and the chain's prompt is the scorer's prompt, character for character."""
        sources = [Source(id=str(i), text=d.page_content, metadata=jsonable(dict(d.metadata)))
                   for i, d in enumerate(documents)]
        turn = PromptTemplate(document=self.document, messages=(("user", "{documents}"),))
        return turn.user_turn("", sources, [s.text for s in sources])


def as_chain_prompt(prompt: Any, attributor: Attributor | None = None) -> ChainPrompt | None:
    """``prompt`` as a :class:`ChainPrompt` (``None`` stays ``None``).

    Raises:
        ConfigError: a prompt beside a given ``attributor`` (it keeps its own template).
    """
    if prompt is not None and attributor is not None:
        raise ConfigError("prompt= and attributor= together: a given attributor keeps its own template; "
                          "pass model=... (and template= for its other settings) to score under the prompt")
    if prompt is None or isinstance(prompt, ChainPrompt):
        return prompt
    return ChainPrompt(prompt)


def scoring_attributor(scorer: ScorerSettings, prompt: ChainPrompt | None, values: Any) -> Attributor:
    """The attributor to score a chain's answer with: the scorer's shared one, or under the chain's
    ``prompt`` (its other variables read from ``values``, the chain's input). The citation step and
    the callback handler both decide here."""
    if prompt is None:
        return scorer.resolve()
    template = prompt.template(values if isinstance(values, Mapping) else {}, scorer.template)
    return scorer.resolve(template, shared=not prompt.extra_variables)


def scoring_history(prompt: ChainPrompt | None, values: Any, key: str | None, keep: int | None) -> list[dict[str, str]]:
    """The earlier turns to score: without a chain prompt, the history in ``values`` (``key``, else
    ``chat_history``/``history``); under one, only what its history placeholder shows (none: none)."""
    if prompt is None:
        return chain_history(values, key, keep)
    if prompt.history_variable is None:
        return []
    key = key or prompt.history_variable
    return chain_history(values, key, keep) if isinstance(values, Mapping) and key in values else []


def create_cited_rag_chain(
    retriever: Runnable,
    llm: Runnable,
    prompt: ChatPromptTemplate | ChainPrompt,
    **citation_options: Any,
) -> Runnable:
    """A RAG chain that answers with ``prompt`` and ``llm`` and cites under that same prompt.

    ``retriever | format_documents`` fills the prompt's documents variable, ``prompt | llm``
    answers, and an :class:`~langchain_attribot.AttribotCitations` step given ``prompt`` cites the
    answer (``citation_options`` go to it). Invoke it with the question (a ``str``), or a dict of
    the prompt's variables (question, ``chat_history``, others) when the prompt has more than the
    question and documents. The output is the input dict plus ``context`` (the retrieved
    documents), ``answer`` and the citation keys.
    """
    from .citations import AttribotCitations

    chain_prompt = as_chain_prompt(prompt)
    question = chain_prompt.question_variable
    if question is None:
        raise ConfigError("create_cited_rag_chain needs a prompt with a question variable (question, input or "
                          "query, or question_variable=...): the retriever is queried with it")
    documents = chain_prompt.documents_variable

    def inputs(value: Any) -> dict[str, Any]:
        return dict(value) if isinstance(value, Mapping) else {question: value}

    def fill(values: Mapping[str, Any]) -> str:
        return chain_prompt.format_documents(values["context"])

    citation_options.setdefault("question_key", question)
    citation_options.setdefault("documents_key", "context")
    step = AttribotCitations(prompt=chain_prompt, **citation_options)
    answer = RunnablePassthrough.assign(**{documents: fill}) | chain_prompt.prompt | llm
    return (
        RunnableLambda(inputs)
        | RunnablePassthrough.assign(context=itemgetter(question) | retriever)
        | RunnablePassthrough.assign(answer=answer)
        | step
    )
