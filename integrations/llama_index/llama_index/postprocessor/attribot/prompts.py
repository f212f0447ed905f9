"""Score answers with the prompt LlamaIndex generated them with.

Leave-one-out scores are most faithful when the scoring prompt is the generation prompt. This
module turns a LlamaIndex question-answering prompt (by default the response synthesizer's
default text-QA prompt) into an :class:`attribot_rag.PromptTemplate` whose rendering matches
what the synthesizer sends the LLM: each node's ``get_content(MetadataMode.LLM)`` joined by
blank lines as ``{context_str}``, the query as ``{query_str}``.
"""

from __future__ import annotations

import string
from typing import Any

from attribot_rag import ConfigError, PromptTemplate
from llama_index.core.base.llms.types import MessageRole
from llama_index.core.prompts import ChatPromptTemplate, SelectorPromptTemplate
from llama_index.core.prompts import PromptTemplate as LlamaPromptTemplate
from llama_index.core.prompts.chat_prompts import CHAT_TEXT_QA_PROMPT
from llama_index.core.prompts.default_prompts import DEFAULT_TEXT_QA_PROMPT

_FIELDS = {"context_str": "documents", "query_str": "question"}


def _convert(text: str, partials: dict[str, Any], *, template: bool) -> str:
    """Fill partials; as a ``template``, map ``{context_str}``/``{query_str}`` to ``{documents}``/``{question}``.

    A template comes back as a ``str.format`` string (literal braces doubled); otherwise (a
    system message, used verbatim) as plain text, which may not contain the context or query.
    """

    def literal(s: str) -> str:
        return s.replace("{", "{{").replace("}", "}}") if template else s

    out = []
    for text_part, field, _spec, _conversion in string.Formatter().parse(text):
        out.append(literal(text_part))
        if field is None:
            continue
        if field in _FIELDS and template:
            out.append("{" + _FIELDS[field] + "}")
        elif field in partials:
            out.append(literal(str(partials[field])))
        elif field in _FIELDS:
            raise ConfigError(
                f"the system message holds {{{field}}}: only prompts with the context and query in the user "
                "message can be mirrored; pass an attribot_rag.PromptTemplate instead"
            )
        else:
            raise ConfigError(
                f"the prompt has a variable {{{field}}} that attribution cannot fill: partially format it "
                "first (prompt.partial_format(...)) or pass an attribot_rag.PromptTemplate"
            )
    return "".join(out)


def llamaindex_qa_template(prompt: Any = None, llm: Any = None) -> PromptTemplate:
    """An attribot :class:`~attribot_rag.PromptTemplate` rendering like a LlamaIndex QA prompt.

    Args:
        prompt: a LlamaIndex ``ChatPromptTemplate`` (a system and one user message),
            ``PromptTemplate`` or ``SelectorPromptTemplate`` using ``{context_str}`` and
            ``{query_str}``. ``None`` = the response synthesizer's default text-QA prompt: the
            chat version (what chat LLMs get) unless ``llm`` is a completion model.
        llm: the LLM the prompt is for; picks a selector prompt's variant.

    Use it with node content rendered the way the synthesizer renders it
    (``AttribotNodePostprocessor(metadata_mode=MetadataMode.LLM)``, the default).
    """
    if prompt is None:
        chat = llm is None or getattr(getattr(llm, "metadata", None), "is_chat_model", True)
        prompt = CHAT_TEXT_QA_PROMPT if chat else DEFAULT_TEXT_QA_PROMPT
    if isinstance(prompt, SelectorPromptTemplate):
        prompt = prompt.select(llm) if llm is not None else prompt.default_template
    partials = dict(getattr(prompt, "kwargs", None) or {})
    if isinstance(prompt, ChatPromptTemplate):
        system = [m.content or "" for m in prompt.message_templates if m.role == MessageRole.SYSTEM]
        users = [m for m in prompt.message_templates if m.role == MessageRole.USER]
        others = [m for m in prompt.message_templates if m.role not in (MessageRole.SYSTEM, MessageRole.USER)]
        if len(users) != 1 or others or len(system) > 1:
            raise ConfigError(
                "only chat prompts with one optional system message and one user message can be mirrored: "
                "pass an attribot_rag.PromptTemplate instead"
            )
        return PromptTemplate(
            system=_convert(system[0], partials, template=False) if system else None,
            user=_convert(users[0].content or "", partials, template=True),
            document="{text}",
        )
    if isinstance(prompt, LlamaPromptTemplate):
        return PromptTemplate(user=_convert(prompt.template, partials, template=True), document="{text}")
    raise ConfigError(
        f"cannot mirror a {type(prompt).__name__}: pass a ChatPromptTemplate / PromptTemplate, "
        "or an attribot_rag.PromptTemplate"
    )
