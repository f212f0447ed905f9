"""Bad chain output -> clear, typed errors (raised before any model work where possible)."""

from __future__ import annotations

import pytest
from attribot_rag import EmptyAnswerError, InputError, NoSourcesError
from langchain_core.documents import Document
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import RunnableLambda, RunnableParallel, RunnablePassthrough

from langchain_attribot import (
    AttribotCallbackHandler,
    AttribotCitations,
    AttribotDocumentFilter,
    ChainInputError,
    CitationsNotReadyError,
    DocumentIdError,
)

from .conftest import ANSWER, QUESTION


@pytest.fixture
def step(lc_tiny):
    return AttribotCitations(lc_tiny)


def test_no_documents_in_the_chain_output(step):
    with pytest.raises(ChainInputError, match=r"no documents .*keys: \['answer', 'question'\]"):
        step.invoke({"question": QUESTION, "answer": ANSWER})
    with pytest.raises(ChainInputError, match="no 'ctx' key"):
        AttribotCitations(documents_key="ctx").invoke({"question": QUESTION, "answer": ANSWER, "context": []})


def test_empty_document_list(step):
    with pytest.raises(NoSourcesError, match="retriever returned nothing"):
        step.invoke({"question": QUESTION, "context": [], "answer": ANSWER})


def test_formatted_context_instead_of_documents(step, docs):
    with pytest.raises(ChainInputError, match="is a str, not the retrieved Documents"):
        step.invoke({"question": QUESTION, "context": "Paris is the capital of France.", "answer": ANSWER})
    with pytest.raises(ChainInputError, match=r"'context'\[1\] is a str"):
        step.invoke({"question": QUESTION, "context": [docs[0], "text"], "answer": ANSWER})


def test_documents_without_ids(step, docs):
    no_id = [docs[0], Document(page_content="Berlin is in Germany.")]
    with pytest.raises(DocumentIdError, match=r"document 1 has no id .*Document\(id=\.\.\.\)"):
        step.invoke({"question": QUESTION, "context": no_id, "answer": ANSWER})
    with pytest.raises(DocumentIdError, match=r"nor metadata\['source'\]"):
        AttribotCitations(id_key="source").invoke({"question": QUESTION, "context": no_id, "answer": ANSWER})
    dup = [docs[0], Document(id=docs[0].id, page_content="Other text.")]
    with pytest.raises(DocumentIdError, match="documents 0 and 1 share the id 'capitals'"):
        step.invoke({"question": QUESTION, "context": dup, "answer": ANSWER})


@pytest.mark.parametrize("answer", ["", "   \n", AIMessage(content=""),
                                    AIMessage(content="", tool_calls=[{"name": "f", "args": {}, "id": "1"}]),
                                    AIMessage(content=[{"type": "reasoning", "reasoning": "..."}])])
def test_empty_answer(step, docs, answer):
    with pytest.raises(EmptyAnswerError, match="answer"):
        step.invoke({"question": QUESTION, "context": docs, "answer": answer})


def test_missing_or_wrong_question_and_answer(step, docs):
    with pytest.raises(ChainInputError, match="no answer"):
        step.invoke({"question": QUESTION, "context": docs})
    with pytest.raises(ChainInputError, match="no question"):
        step.invoke({"context": docs, "answer": ANSWER})
    with pytest.raises(ChainInputError, match="question .* is empty"):
        step.invoke({"question": " ", "context": docs, "answer": ANSWER})
    with pytest.raises(ChainInputError, match="must be a str or an AIMessage"):
        step.invoke({"question": QUESTION, "context": docs, "answer": {"text": ANSWER}})
    with pytest.raises(ChainInputError, match="takes the chain's dict"):
        step.invoke(ANSWER)


def test_errors_are_input_errors_and_value_errors(step):
    with pytest.raises(InputError):
        step.invoke({"question": QUESTION, "answer": ANSWER})
    with pytest.raises(ValueError):
        step.invoke({"question": QUESTION, "answer": ANSWER})


def test_batch_can_return_exceptions(step, docs):
    good = {"question": QUESTION, "context": docs, "answer": ANSWER}
    out = step.batch([good, {"question": QUESTION, "context": [], "answer": ANSWER}], return_exceptions=True)
    assert "citations" in out[0] and isinstance(out[1], NoSourcesError)


def test_filter_reports_the_same_errors(lc_tiny, docs):
    f = AttribotDocumentFilter(lc_tiny)
    with pytest.raises(DocumentIdError):
        f.filter_documents([Document(page_content="x")], QUESTION, ANSWER)
    with pytest.raises(EmptyAnswerError):
        f.filter_documents(docs, QUESTION, "")
    with pytest.raises(NoSourcesError):
        f.invoke({"question": QUESTION, "context": [], "answer": ANSWER})


def test_callback_handler_stores_errors_and_can_raise(lc_tiny, prompt, fake_llm):
    handler = AttribotCallbackHandler(lc_tiny)
    no_docs = RunnableParallel(context=RunnableLambda(lambda q: []), question=RunnablePassthrough())
    chain = no_docs | prompt | fake_llm | StrOutputParser()
    assert chain.invoke(QUESTION, config={"callbacks": [handler]}) == ANSWER  # the chain itself is unaffected
    with pytest.raises(ChainInputError, match="no retriever returned documents"):
        handler.get(handler.latest_run_id)
    with pytest.raises(CitationsNotReadyError, match="no citations for run"):
        handler.get("00000000-0000-0000-0000-000000000000")
    strict = AttribotCallbackHandler(lc_tiny, raise_error=True)
    with pytest.raises(ChainInputError):
        chain.invoke(QUESTION, config={"callbacks": [strict]})


@pytest.mark.parametrize("kwargs", [{"top_k": -1}, {"top_k": 2.5}, {"used_min_share": 5.0}, {"used_min_share": -0.1}])
def test_bad_options_are_config_errors_in_every_component(lc_tiny, kwargs):
    from attribot_rag import ConfigError

    from langchain_attribot import AttribotCallbackHandler, AttribotCitations

    for component in (AttribotCitations, AttribotCallbackHandler):
        with pytest.raises(ConfigError, match="top_k|used-share"):
            component(lc_tiny, **kwargs)
