"""Scoring under the chain's own prompt, tool documents, and history through langchain-core's conversion.

The tiny random model's scores mean nothing; what is checked is *which prompt* is scored: the
scorer's full prompt is the chain's rendered prompt, character for character, and each ablation
lacks exactly one document's text.
"""

from __future__ import annotations

import pytest
from attribot_rag import AttributorConfig, ConfigError, PromptBuilder, shared_attributor
from attribot_rag.prompt import as_history
from langchain_core.documents import Document
from langchain_core.messages import (
    AIMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    convert_to_messages,
    convert_to_openai_messages,
)
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import RunnableLambda, RunnableParallel, RunnablePassthrough

from langchain_attribot import (
    AttribotCallbackHandler,
    AttribotCitations,
    ChainInputError,
    ChainPrompt,
    create_cited_rag_chain,
)
from langchain_attribot._convert import history_messages, to_sources

from .conftest import ANSWER, LOO_RULE, QUESTION

HISTORY = [HumanMessage("Tell me about Paris."), AIMessage("It is the capital of France.")]


@pytest.fixture
def history_prompt():
    return ChatPromptTemplate.from_messages([
        ("system", "Answer in one sentence using these documents:\n\n{documents}"),
        MessagesPlaceholder("chat_history", optional=True),
        ("human", "{question}"),
    ])


def _chain_text(tok, prompt, **variables) -> str:
    """What the chain's chat model is sent, rendered by the scoring model's chat template."""
    messages = convert_to_openai_messages(prompt.format_messages(**variables), text_format="string")
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("with_history", [False, True])
def test_the_scoring_prompt_is_the_chains_rendered_prompt(lc_tiny, docs, history_prompt, with_history):
    tok = lc_tiny.tokenizer
    chain_prompt = ChainPrompt(history_prompt)
    assert (chain_prompt.documents_variable, chain_prompt.question_variable, chain_prompt.history_variable) == (
        "documents", "question", "chat_history")
    history = HISTORY if with_history else []
    builder = PromptBuilder(tok, chain_prompt.template())
    sources = to_sources(docs)
    turns = as_history(history_messages(history))

    full = builder.prompt_text(QUESTION, sources, history=turns)
    assert full == _chain_text(tok, history_prompt, documents=chain_prompt.format_documents(docs),
                               question=QUESTION, chat_history=history)
    assert tok.decode(builder.encode_prompt(QUESTION, sources, history=turns)) == full
    for d, doc in enumerate(docs):
        ablated = builder.prompt_text(QUESTION, sources, (d, None), history=turns)
        others = [x for i, x in enumerate(docs) if i != d]
        assert ablated == _chain_text(tok, history_prompt, documents=chain_prompt.format_documents(others),
                                      question=QUESTION, chat_history=history)
        assert doc.page_content not in ablated and all(o.page_content in ablated for o in others)
        assert len(full) - len(ablated) == len(doc.page_content) + 2


def test_the_step_scores_under_the_chain_prompt(lc_tiny, values, docs, prompt):
    step = AttribotCitations(lc_tiny, prompt=prompt, top_k=None, rule=LOO_RULE)
    template = ChainPrompt(prompt).template()
    assert template.messages == (("system", "Answer from the documents.\n\n{documents}"), ("user", "{question}"))
    expected = shared_attributor(AttributorConfig(lc_tiny, template=template)).attribute(
        QUESTION, to_sources(docs), ANSWER).decisions(LOO_RULE).citations
    cites = step.invoke(values)["citations"]
    assert [(c["document_id"], c["sentence_index"]) for c in cites] == [(c.source_id, c.sentence_index)
                                                                         for c in expected]
    assert [c["score"] for c in cites] == pytest.approx([c.score for c in expected])
    fixed = AttribotCitations(lc_tiny, top_k=None, rule=LOO_RULE).invoke(values)["citations"]
    assert [c["score"] for c in cites] != pytest.approx([c["score"] for c in fixed])  # another prompt
    # history: scored where the prompt puts it; a prompt with no placeholder shows none, so none is scored
    with_history = {**values, "chat_history": HISTORY}
    assert step.invoke(with_history)["citations"] == cites


def test_create_cited_rag_chain_sends_the_llm_the_prompt_it_scores(lc_tiny, retriever, docs, history_prompt):
    seen = []

    def llm(prompt_value):
        seen.append(prompt_value.to_messages())
        return AIMessage(ANSWER)

    chain = create_cited_rag_chain(retriever, RunnableLambda(llm), history_prompt, model=lc_tiny, top_k=None,
                                   rule=LOO_RULE)
    out = chain.invoke({"question": QUESTION, "chat_history": HISTORY})
    assert out["answer"].text == ANSWER and [d.id for d in out["context"]] == [d.id for d in docs]
    tok = lc_tiny.tokenizer
    sent = tok.apply_chat_template(convert_to_openai_messages(seen[0], text_format="string"), tokenize=False,
                                   add_generation_prompt=True)
    builder = PromptBuilder(tok, ChainPrompt(history_prompt).template())
    assert builder.prompt_text(QUESTION, to_sources(docs), history=as_history(history_messages(HISTORY))) == sent
    ref = AttribotCitations(lc_tiny, prompt=history_prompt, top_k=None, rule=LOO_RULE).invoke(
        {"question": QUESTION, "context": docs, "answer": ANSWER, "chat_history": HISTORY})
    assert out["citations"] == ref["citations"]
    assert chain.invoke(QUESTION)["answer"].text == ANSWER  # a bare question works too


def test_the_callback_handler_scores_under_the_chain_prompt(lc_tiny, lc_attributor, retriever):
    prompt = ChatPromptTemplate.from_messages([
        ("system", "Answer in {language} from these documents:\n\n{documents}"),
        MessagesPlaceholder("chat_history", optional=True),
        ("human", "{question}"),
    ])
    chain = create_cited_rag_chain(retriever, RunnableLambda(lambda _: AIMessage(ANSWER)), prompt, model=lc_tiny,
                                   top_k=None, rule=LOO_RULE)
    under = AttribotCallbackHandler(lc_tiny, prompt=prompt, top_k=None, rule=LOO_RULE)
    fixed = AttribotCallbackHandler(lc_tiny, top_k=None, rule=LOO_RULE)
    inputs = {"question": QUESTION, "chat_history": HISTORY, "language": "French"}
    out = chain.invoke(inputs, config={"callbacks": [under, fixed]})
    assert out["citations"] and under.latest["citations"] == out["citations"]  # the step's prompt, variables, history
    assert [c["score"] for c in fixed.latest["citations"]] != pytest.approx([c["score"] for c in out["citations"]])
    english = chain.invoke({**inputs, "language": "English"}, config={"callbacks": [under]})
    assert under.latest["citations"] == english["citations"] != out["citations"]
    list(chain.stream(inputs, config={"callbacks": [under]}))  # streamed: the input arrives at the run's end
    assert under.latest["citations"] == out["citations"]
    # a chain whose top-level input (a bare question) lacks the prompt's variable: stored by run id, the chain goes on
    plain = RunnableParallel(context=retriever, question=RunnablePassthrough()) | RunnablePassthrough.assign(
        answer=RunnableLambda(lambda _: AIMessage(ANSWER)))
    assert plain.invoke(QUESTION, config={"callbacks": [under]})["answer"].text == ANSWER
    with pytest.raises(ChainInputError, match="needs 'language'"):
        _ = under.latest
    with pytest.raises(ConfigError, match="attributor"):
        AttribotCallbackHandler(attributor=lc_attributor, prompt=prompt)


def test_other_prompt_variables_come_from_the_input(lc_tiny, values):
    prompt = ChatPromptTemplate.from_messages([
        ("system", "Answer in {language}, from {{these}} documents:\n\n{context}"), ("human", "{question}")])
    chain_prompt = ChainPrompt(prompt)
    assert chain_prompt.extra_variables == ["language"]
    assert chain_prompt.template({"language": "French"}).messages[0] == (
        "system", "Answer in French, from {{these}} documents:\n\n{documents}")
    step = AttribotCitations(lc_tiny, prompt=prompt, top_k=None, rule=LOO_RULE)
    french = step.invoke({**values, "language": "French"})["citations"]
    assert step.invoke({**values, "language": "French"})["citations"] == french
    assert len(step.scorer._recent) == 1  # per-call templates: a small cache of its own, not the shared one
    with pytest.raises(ChainInputError, match="needs 'language'"):
        step.invoke(values)


def test_chain_prompt_settings_fail_at_construction(lc_tiny, lc_attributor, prompt):
    with pytest.raises(ConfigError, match="ChatPromptTemplate"):
        ChainPrompt("Answer: {context}")
    with pytest.raises(ConfigError, match="no documents variable"):
        ChainPrompt(ChatPromptTemplate.from_messages([("human", "{question}")]))
    with pytest.raises(ConfigError, match="several documents"):
        ChainPrompt(ChatPromptTemplate.from_messages([("system", "{context} {docs}"), ("human", "{question}")]))
    with pytest.raises(ConfigError, match="2 times"):
        ChainPrompt(ChatPromptTemplate.from_messages([("system", "{context}"), ("human", "{context} {question}")]))
    with pytest.raises(ConfigError, match="documents_variable='ctx'"):
        ChainPrompt(prompt, documents_variable="ctx")
    explicit = ChainPrompt(ChatPromptTemplate.from_messages([("system", "{ctx}"), ("human", "{q}")]),
                           documents_variable="ctx", question_variable="q")
    assert explicit.template().messages == (("system", "{documents}"), ("user", "{question}"))
    with pytest.raises(ConfigError, match="attributor"):
        AttribotCitations(attributor=lc_attributor, prompt=prompt)


# ---------------------------------------------------------------------------------------- tools
def _tool_turns(docs):
    call = {"name": "search", "args": {"query": QUESTION}, "id": "call-1", "type": "tool_call"}
    return [
        HumanMessage(QUESTION),
        AIMessage("", tool_calls=[call]),
        ToolMessage("\n\n".join(d.page_content for d in docs), tool_call_id="call-1", artifact=docs),
        AIMessage(ANSWER),
    ]


def test_tool_message_artifacts_are_citable(lc_tiny, docs):
    step = AttribotCitations(lc_tiny, top_k=None, rule=LOO_RULE)
    ref = step.invoke({"question": QUESTION, "context": docs, "answer": ANSWER})
    # an agent's state as it is: question, answer and documents all from the message list
    out = step.invoke({"messages": _tool_turns(docs)})
    assert out["citations"] == ref["citations"] and out["citations"]
    assert [d["id"] for d in out["attribot"]["documents"]] == [d["id"] for d in ref["attribot"]["documents"]]
    # tool documents after the retrieved ones; one returned by both is one source
    extra = Document(id="extra", page_content="Gustave Eiffel was a French engineer.")
    merged = step.invoke({"question": QUESTION, "context": docs, "answer": ANSWER,
                          "messages": _tool_turns([docs[1], extra])})
    assert sorted(d["id"] for d in merged["attribot"]["documents"]) == sorted([*(d.id for d in docs), "extra"])
    # a non-Document artifact is not a source
    odd = _tool_turns(docs)
    odd[2] = ToolMessage("42", tool_call_id="call-1", artifact={"rows": 42})
    with pytest.raises(ChainInputError, match="documents"):
        step.invoke({"question": QUESTION, "answer": ANSWER, "messages": odd})


# ---------------------------------------------------------------------------------------- history
def test_history_goes_through_langchain_core_conversion_and_round_trips_roles():
    mixed = [SystemMessage("be brief"), HumanMessage("a"), AIMessage([{"type": "text", "text": "b"}]),
             ("human", "c"), ("ai", "d"), {"role": "user", "content": "e"}, {"role": "assistant", "content": "f"},
             ToolMessage("tool output", tool_call_id="1"), AIMessage("", tool_calls=[
                 {"name": "t", "args": {}, "id": "1", "type": "tool_call"}])]
    turns = history_messages(mixed)
    assert turns == [{"role": r, "content": c} for r, c in
                     [("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"), ("user", "e"),
                      ("assistant", "f")]]
    back = convert_to_messages(turns)
    assert [type(m) for m in back] == [HumanMessage, AIMessage] * 3
    assert history_messages(back) == turns  # round trip
    assert convert_to_openai_messages(back) == turns
    with pytest.raises(ChainInputError, match="role 'narrator'"):
        history_messages([ChatMessage(role="narrator", content="x")])
    with pytest.raises(ChainInputError, match="not a chat message"):
        history_messages([("weird", "x")])
