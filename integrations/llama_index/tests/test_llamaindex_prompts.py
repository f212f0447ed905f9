"""llamaindex_qa_template: attribution scores the prompt the response synthesizer actually sent."""

import pytest
from attribot_rag import Attributor, ConfigError, Source
from attribot_rag.prompt import PromptBuilder
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.prompts import ChatPromptTemplate, PromptTemplate, RichPromptTemplate
from llama_index.core.schema import MetadataMode

from llama_index.postprocessor.attribot import (
    METADATA_KEY,
    AttribotLLM,
    AttribotNodePostprocessor,
    AttributedQueryEngine,
    llamaindex_qa_template,
)
from llama_index.postprocessor.attribot.llm import render_messages


def test_scoring_prompt_is_the_synthesizers_prompt(tiny):
    sent = []

    def recording(messages):
        sent.append(render_messages(tiny.tokenizer, messages))
        return sent[-1]

    llm = AttribotLLM(tiny, max_new_tokens=8, messages_to_prompt=recording)
    docs = [
        Document(text="Paris is the capital of France. Berlin is in Germany.", metadata={"title": "Capitals"}),
        Document(text="The Eiffel Tower was built in 1889. Gustave Eiffel built it.", metadata={"title": "Tower"}),
    ]
    index = VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))
    template = llamaindex_qa_template()
    engine = AttributedQueryEngine.from_defaults(
        index.as_query_engine(llm=llm, similarity_top_k=2), attributor=Attributor(tiny, template=template)
    )
    question = "Who built the {tower}?"  # braces must survive both templates
    response = engine.query(question)
    assert len(sent) == 1
    by_rank = sorted(response.metadata[METADATA_KEY]["nodes"], key=lambda e: e["retrieval_rank"])
    nodes = {n.node.node_id: n.node for n in response.source_nodes}
    sources = [Source(e["node_id"], nodes[e["node_id"]].get_content(MetadataMode.LLM)) for e in by_rank]
    assert PromptBuilder(tiny.tokenizer, template).prompt_text(question, sources) == sent[0]


def test_completion_and_custom_prompts():
    class Completion:
        class metadata:  # noqa: N801 - mimics llm.metadata
            is_chat_model = False

    plain = llamaindex_qa_template(llm=Completion())
    assert plain.system is None and plain.user.startswith("Context information is below.")
    assert "{documents}" in plain.user and "{question}" in plain.user
    custom = ChatPromptTemplate(message_templates=[
        ChatMessage(role=MessageRole.SYSTEM, content="You are {persona}. Literal {{braces}}."),
        ChatMessage(role=MessageRole.USER, content="Docs:\n{context_str}\nQ: {query_str}"),
    ]).partial_format(persona="terse")
    mirrored = llamaindex_qa_template(custom)
    assert mirrored.system == "You are terse. Literal {braces}."
    assert mirrored.user == "Docs:\n{documents}\nQ: {question}"
    assert llamaindex_qa_template(PromptTemplate("{context_str} | {query_str}")).user == "{documents} | {question}"


def test_unmirrorable_prompts_are_clear_errors():
    with pytest.raises(ConfigError, match="variable \\{tone\\}"):
        llamaindex_qa_template(PromptTemplate("{tone} {context_str} {query_str}"))
    with pytest.raises(ConfigError, match="system message"):
        llamaindex_qa_template(ChatPromptTemplate(message_templates=[
            ChatMessage(role=MessageRole.SYSTEM, content="{context_str}"),
            ChatMessage(role=MessageRole.USER, content="{query_str}"),
        ]))
    with pytest.raises(ConfigError, match="RichPromptTemplate"):
        llamaindex_qa_template(RichPromptTemplate("{{ context_str }} {{ query_str }}"))


def test_default_postprocessor_builds_the_mirrored_template(monkeypatch):
    import llama_index.postprocessor.attribot.base as base

    made = []
    monkeypatch.setattr(base, "shared_attributor", lambda config: made.append(config) or object())
    AttribotNodePostprocessor().get_attributor()
    assert made[0].template == llamaindex_qa_template()
