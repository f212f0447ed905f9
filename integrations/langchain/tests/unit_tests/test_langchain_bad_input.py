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


@pytest.mark.parametrize("kwargs", [{"top_k": -1}, {"top_k": 2.5}, {"used_min_share": 5.0}, {"used_min_share": -0.1},
                                    {"rule": "strict"}, {"rule": {"min_loo": 0.5}}])
def test_bad_options_are_config_errors_in_every_component(lc_tiny, kwargs):
    from attribot_rag import ConfigError

    from langchain_attribot import AttribotCallbackHandler, AttribotCitations

    for component in (AttribotCitations, AttribotCallbackHandler):
        with pytest.raises(ConfigError, match="top_k|used-share|rule=.*DecisionRule"):
            component(lc_tiny, **kwargs)
    with pytest.raises(ConfigError, match="top_k|used-share|rule=.*DecisionRule"):  # per call too
        AttribotCitations(lc_tiny).invoke({"question": QUESTION, "context": [], "answer": ANSWER}, **kwargs)


NAN, INF = float("nan"), float("inf")
BAD_SETTINGS = [  # (settings, what the message says); named models: nothing may load to find out
    ({"strategy": "hierarchial"}, "unknown strategy 'hierarchial': use 'auto'"),
    ({"strategy": "proxy-prune"}, "needs a proxy model"),
    ({"strategy": ["auto"]}, "pass a preset name or a Strategy"),
    ({"dtype": "fp33"}, "unknown dtype 'fp33': pass a torch.dtype or one of fp32"),
    ({"dtype": 32}, "unknown dtype 32: pass a torch.dtype"),
    ({"device": "gpu"}, "unknown device 'gpu': use 'cpu'"),
    ({"min_score": NAN}, r"min_score\)? is nan: pass a finite number"),
    ({"min_score": INF}, "is inf: pass a finite number"),
    ({"min_score": "0.1"}, "is '0.1': pass a finite number"),
    ({"attributor_kwargs": {"max_batch_sise": 4}}, "'max_batch_sise', which is not an Attributor option"),
    ({"attributor_kwargs": {"max_batch_size": [4]}}, r"\['max_batch_size'\] = \[4\] is unhashable"),
    ({"attributor_kwargs": {"overflow": "truncate"}}, "unknown overflow policy 'truncate'"),
    ({"attributor_kwargs": {"strategy": "auto"}}, "pass it as its own argument"),
    ({"template": "Answer: {question}"}, "template=str: pass an attribot_rag.PromptTemplate"),
    ({"attributor": "smollm2-135m"}, "attributor=str: pass an attribot_rag.Attributor"),
    ({"proxy": 3}, "proxy=int: pass an embedded short name"),
    ({"id_key": 0}, "id_key=0: pass the metadata key"),
]


@pytest.mark.parametrize("settings,message", BAD_SETTINGS, ids=[str(s) for s, _ in BAD_SETTINGS])
@pytest.mark.parametrize("component", [AttribotCitations, AttribotCallbackHandler, AttribotDocumentFilter])
def test_bad_settings_fail_at_construction(monkeypatch, component, settings, message):
    """Before the fix they failed at the first invoke, after the chain's LLM had already run."""
    import attribot_rag.models as core_models
    from attribot_rag import ConfigError

    monkeypatch.setattr(core_models, "load_model",
                        lambda *a, **k: pytest.fail("constructing a component loaded a model"))
    with pytest.raises(ConfigError, match=message):
        component("settings-test-model", **settings)


@pytest.mark.parametrize("component", [AttribotCitations, AttribotCallbackHandler])
def test_bad_used_min_score_fails_at_construction(component):
    from attribot_rag import ConfigError

    with pytest.raises(ConfigError, match="used-score threshold .* is nan"):
        component("settings-test-model", used_min_score=NAN)


def test_device_or_dtype_with_a_model_object_is_refused(lc_tiny):
    from attribot_rag import ConfigError

    for component in (AttribotCitations, AttribotCallbackHandler, AttribotDocumentFilter):
        with pytest.raises(ConfigError, match="device= and dtype= apply to models loaded by name"):
            component(lc_tiny, dtype="fp32")
        with pytest.raises(ConfigError, match="device= and dtype= apply to models loaded by name"):
            component("settings-test-model", proxy=lc_tiny, device="cpu", strategy="proxy-prune")


def test_a_bad_step_fails_before_the_chain_calls_the_llm(lc_tiny, prompt, fake_llm, retriever):
    from attribot_rag import ConfigError

    calls = []
    llm = RunnableLambda(lambda p: calls.append(p) or fake_llm.invoke(p))
    with pytest.raises(ConfigError, match="unknown strategy"):
        chain = (RunnableParallel(context=retriever, question=RunnablePassthrough())
                 | RunnablePassthrough.assign(answer=prompt | llm | StrOutputParser())
                 | AttribotCitations(lc_tiny, strategy="hierarchial"))
        chain.invoke(QUESTION)
    assert calls == []


def test_bad_chat_model_settings_fail_at_construction(lc_tiny):
    from attribot_rag import ConfigError

    from langchain_attribot import ChatAttribot

    for settings, message in [({"dtype": "fp33"}, "unknown dtype 'fp33'"), ({"device": "gpu"}, "unknown device 'gpu'"),
                              ({"model": 3}, "model=int"), ({"max_new_tokens": 0}, "int >= 1")]:
        with pytest.raises(ConfigError, match=message):
            ChatAttribot(**{"model": "settings-test-model", **settings})


def test_callback_handler_max_results_must_be_positive():
    from attribot_rag import ConfigError

    with pytest.raises(ConfigError, match="max_results=0"):
        AttribotCallbackHandler("settings-test-model", max_results=0)
