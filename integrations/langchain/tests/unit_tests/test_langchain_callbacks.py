"""The callback handler: same citations as the Runnable for the same run, by run id, as a custom event."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import RunnableParallel, RunnablePassthrough

from langchain_attribot import EVENT_NAME, AttribotCallbackHandler, AttribotCitations

from .conftest import ANSWER, LOO_RULE, QUESTION


def _chain(retriever, prompt, llm, step=None):
    chain = (
        RunnableParallel(context=retriever, question=RunnablePassthrough())
        | RunnablePassthrough.assign(answer=prompt | llm | StrOutputParser())
    )
    return chain | step if step is not None else chain


def test_handler_matches_the_runnable_for_the_same_run(lc_tiny, retriever, prompt, fake_llm):
    step = AttribotCitations(lc_tiny, top_k=None, rule=LOO_RULE, used_min_score=0.0)
    handler = AttribotCallbackHandler(lc_tiny, top_k=None, rule=LOO_RULE, used_min_score=0.0)
    run_id = uuid.uuid4()
    out = _chain(retriever, prompt, fake_llm, step).invoke(QUESTION, config={"callbacks": [handler], "run_id": run_id})
    record = handler.get(run_id)
    assert handler.latest_run_id == run_id and handler.latest is record
    assert record["question"] == QUESTION and record["citations"] == out["citations"] and out["citations"]
    assert [d.id for d in record["used_context"]] == [d.id for d in out["used_context"]]
    assert [d.id for d in record["documents"]] == [d.id for d in out["context"]]
    # the model's own output was an AIMessage: the handler annotates it as the Runnable would
    assert isinstance(record["answer"], AIMessage) and record["cited_answer"].text == ANSWER
    assert record["summary"]["used_document_ids"] == [d.id for d in out["used_context"]] and out["used_context"]
    assert record["summary"] == {**out["attribot"], "seconds": record["summary"]["seconds"]}


def test_handler_on_a_chain_without_the_step(lc_tiny, retriever, prompt, fake_llm, values):
    handler = AttribotCallbackHandler(lc_tiny, rule=LOO_RULE)
    chain = RunnableParallel(context=retriever, question=RunnablePassthrough()) | prompt | fake_llm
    msg = chain.invoke(QUESTION, config={"callbacks": [handler]})
    assert msg.text == ANSWER and isinstance(msg.content, str)  # a callback cannot change the output
    record = handler.latest
    ref = AttribotCitations(lc_tiny, rule=LOO_RULE).invoke({**values, "answer": msg})
    assert record["citations"] == ref["citations"] and ref["citations"]
    assert record["cited_answer"].content == ref["cited_answer"].content


def test_handler_batch_streaming_and_async_match_invoke(lc_tiny, retriever, prompt, fake_llm):
    handler = AttribotCallbackHandler(lc_tiny, top_k=None, rule=LOO_RULE)
    chain = _chain(retriever, prompt, fake_llm)
    questions = [QUESTION, "Where is the tower?", "Which city is the capital of France?"]
    expected = []
    for q in questions:
        chain.invoke(q, config={"callbacks": [handler]})
        expected.append(handler.latest["citations"])
    ids = [uuid.uuid4() for _ in questions]
    chain.batch(questions, config=[{"callbacks": [handler], "run_id": i} for i in ids])
    assert [handler.get(i)["citations"] for i in ids] == expected
    assert [handler.get(i)["question"] for i in ids] == questions
    # streaming: the top-level run starts with a placeholder input; the question still resolves
    sid = uuid.uuid4()
    list(chain.stream(questions[1], config={"callbacks": [handler], "run_id": sid}))
    assert handler.get(sid)["question"] == questions[1] and handler.get(sid)["citations"] == expected[1]
    aids = [uuid.uuid4() for _ in questions]
    asyncio.run(chain.abatch(questions, config=[{"callbacks": [handler], "run_id": i} for i in aids]))
    assert [handler.get(i)["citations"] for i in aids] == expected
    assert not handler._states and not handler._root  # finished runs leave no state behind


def test_citations_are_dispatched_as_a_custom_event(lc_tiny, retriever, prompt, fake_llm):
    class Listener(BaseCallbackHandler):
        def __init__(self):
            self.events: list[tuple[str, Any, uuid.UUID]] = []

        def on_custom_event(self, name, data, *, run_id, **kwargs):
            self.events.append((name, data, run_id))

    listener = Listener()
    handler = AttribotCallbackHandler(lc_tiny)
    run_id = uuid.uuid4()
    _chain(retriever, prompt, fake_llm).invoke(QUESTION, config={"callbacks": [handler, listener], "run_id": run_id})
    [(name, data, rid)] = listener.events
    assert name == EVENT_NAME and rid == run_id and data is handler.get(run_id)


def test_question_falls_back_to_the_retriever_query(lc_tiny, retriever, prompt, fake_llm):
    handler = AttribotCallbackHandler(lc_tiny)
    chain = (RunnablePassthrough() | (lambda x: x["q"])
             | RunnableParallel(context=retriever, question=RunnablePassthrough()) | prompt | fake_llm)
    chain.invoke({"q": QUESTION}, config={"callbacks": [handler]})
    assert handler.latest["question"] == QUESTION


def test_handler_attached_to_a_sub_chain_and_max_results(lc_tiny, retriever, prompt, fake_llm):
    handler = AttribotCallbackHandler(lc_tiny, max_results=2)
    inner = _chain(retriever, prompt, fake_llm).with_config(callbacks=[handler])
    outer = RunnablePassthrough() | inner
    for q in ("a?", "b?", QUESTION):
        outer.invoke(q)
    assert len(handler.results) == 2 and handler.latest["question"] == QUESTION


def test_handler_cites_what_a_wrapping_retriever_returned(lc_tiny, retriever, docs, prompt, fake_llm):
    """A compression/re-rank retriever reports its inner retriever's candidates first; only its own
    shorter list reaches the prompt, so only that list is cited."""
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.retrievers import BaseRetriever

    class KeepFirstTwo(BaseRetriever):
        inner: BaseRetriever

        def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun):
            return self.inner.invoke(query, config={"callbacks": run_manager.get_child()})[:2]

    handler = AttribotCallbackHandler(lc_tiny, used_min_score=-1e9)
    out = _chain(KeepFirstTwo(inner=retriever), prompt, fake_llm).invoke(QUESTION, config={"callbacks": [handler]})
    assert [d.id for d in out["context"]] == [d.id for d in docs[:2]]
    assert [d.id for d in handler.latest["documents"]] == [d.id for d in docs[:2]]


def test_handler_merges_two_retrievals_of_id_less_documents_by_id_key(lc_tiny, docs, prompt, fake_llm):
    """The same id-less documents retrieved twice in one run (e.g. a rewritten query) are merged by id_key."""
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    plain = [Document(page_content=d.page_content, metadata={"source": f"{d.id}.txt"}) for d in docs]

    class Fixed(BaseRetriever):
        def _get_relevant_documents(self, query: str, *, run_manager: Any):
            return list(plain)

    chain = (RunnableParallel(a=Fixed(), b=Fixed(), question=RunnablePassthrough())
             | (lambda x: {"question": x["question"], "context": x["a"]})
             | RunnablePassthrough.assign(answer=prompt | fake_llm | StrOutputParser()))
    handler = AttribotCallbackHandler(lc_tiny, id_key="source", raise_error=True)
    chain.invoke(QUESTION, config={"callbacks": [handler]})
    assert [d.metadata["source"] for d in handler.latest["documents"]] == [d.metadata["source"] for d in plain]


def test_handler_and_filter_score_a_chat_turn_in_its_conversation(lc_tiny, retriever, fake_llm):
    """chat_history in the chain's input is context for the handler and the filter, as for the step."""
    from langchain_core.messages import AIMessage, HumanMessage
    from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder

    from langchain_attribot import AttribotDocumentFilter

    prompt = ChatPromptTemplate.from_messages([MessagesPlaceholder("chat_history"), ("human", "{context}\n{question}")])
    chain = (RunnablePassthrough.assign(context=(lambda x: x["question"]) | retriever)
             | RunnablePassthrough.assign(answer=prompt | fake_llm | StrOutputParser()))
    history = [HumanMessage("Tell me about the Eiffel Tower."), AIMessage("It is in Paris.")]
    handler = AttribotCallbackHandler(lc_tiny, top_k=None, rule=LOO_RULE)
    out = chain.invoke({"question": QUESTION, "chat_history": history}, config={"callbacks": [handler]})
    step = AttribotCitations(lc_tiny, top_k=None, rule=LOO_RULE).cite(out)
    alone = AttribotCitations(lc_tiny, top_k=None, rule=LOO_RULE, history_messages=0).cite(out)
    scores = [d["score"] for d in step.summary["documents"]]
    assert len(step.result.history) == 2 and scores != [d["score"] for d in alone.summary["documents"]]
    assert [d["score"] for d in handler.latest["summary"]["documents"]] == scores
    used = AttribotDocumentFilter(lc_tiny, strategy="auto", rule=LOO_RULE).invoke(out)
    assert [d.metadata["attribot_score"] for d in used] == scores
