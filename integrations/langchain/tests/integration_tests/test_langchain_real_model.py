"""The real scoring model on short documents: an answer from a model the library never sees, the
document filter, and the README's examples run as written."""

from __future__ import annotations

import re

import pytest
from attribot_rag.decisions import DecisionRule
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from langchain_attribot import AttribotCitations, AttribotDocumentFilter

from .conftest import DTYPE, MODEL, PACKAGE_ROOT

pytestmark = pytest.mark.slow

QUESTION = "When was the Eiffel Tower completed, and who designed it?"
DOCS = [
    Document(id="louvre", metadata={"title": "Louvre"},
             page_content="The Louvre is the world's most-visited art museum. It is home to the Mona Lisa."),
    Document(id="eiffel", page_content="The Eiffel Tower is a wrought-iron lattice tower in Paris. It was designed by "
             "the engineering company of Gustave Eiffel and completed in 1889.", metadata={"title": "Eiffel Tower"}),
    Document(id="berlin", page_content="Berlin is the capital of Germany. Its television tower opened in 1969.",
             metadata={"title": "Berlin"}),
]
API_ANSWER = "The Eiffel Tower was completed in 1889. It was designed by Gustave Eiffel's engineering company."


def test_answer_from_an_api_chat_model_is_scored_locally():
    api_model = GenericFakeChatModel(messages=iter([AIMessage(API_ANSWER, response_metadata={"model_name": "gpt-x"})]))
    answer = api_model.invoke(QUESTION)
    step = AttribotCitations(MODEL, dtype=DTYPE, used_min_share=0.5)
    out = step.invoke({"question": QUESTION, "context": DOCS, "answer": answer})
    first = out["citations"][0]
    assert first["document_id"] == "eiffel" and "1889" in first["sentence"]
    used = [d.id for d in out["used_context"]]
    # eiffel holds most of the LOO score; louvre alone lifts the answer too (sufficiency 3.5 nats vs eiffel's 8.9,
    # above the default rule's 25% ratio), so the default rule may also count it: berlin never
    assert "eiffel" in used and "berlin" not in used
    verdicts = {d["id"]: d for d in out["attribot"]["documents"]}
    assert "leave-one-out" in verdicts["eiffel"]["evidence"] and verdicts["louvre"]["evidence"] != ["leave-one-out"]
    cited = out["cited_answer"]
    assert cited.response_metadata["model_name"] == "gpt-x"
    assert cited.response_metadata["attribot"]["model"] == MODEL
    sentences = {"The Eiffel Tower was completed in 1889.", "It was designed by Gustave Eiffel's engineering company."}
    titles = {d.id: d.metadata["title"] for d in DOCS}
    anns = cited.content[0]["annotations"]
    for a in anns:
        assert API_ANSWER[a["start_index"]:a["end_index"]] in sentences
        assert a["title"] == titles[a["extras"]["document_id"]]
    assert {a["title"] for a in anns if a["extras"]["attribot_rank"] == 1} == {"Eiffel Tower"}


def test_filter_keeps_only_the_used_document():
    loo = DecisionRule(min_sufficiency=None)  # the LOO thresholds alone decide "used"
    loose = AttribotDocumentFilter(MODEL, dtype=DTYPE, min_score=1.0, rule=loo).filter_documents(
        DOCS, QUESTION, API_ANSWER)
    strict = AttribotDocumentFilter(MODEL, dtype=DTYPE, min_share=0.5, rule=loo).filter_documents(
        DOCS, QUESTION, API_ANSWER)
    assert [d.id for d in loose] == [d.id for d in strict] == ["eiffel"]
    default = AttribotDocumentFilter(MODEL, dtype=DTYPE).filter_documents(DOCS, QUESTION, API_ANSWER)
    assert "eiffel" in [d.id for d in default] and "berlin" not in [d.id for d in default]
    assert strict[0].metadata["attribot_share"] > 0.5 and strict[0].metadata["attribot_score"] > 1.0


def test_readme_examples_run_as_written(embeddings, capsys):
    """Every ```python block of the README, in order, in one namespace (as a user pasting them would)."""
    readme = (PACKAGE_ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert len(blocks) >= 4
    namespace: dict = {"__name__": "readme_example"}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    out = namespace["out"]
    assert out["attribot"]["supported"] is True  # the answer copies the document's date: the context supports it
    assert out["citations"] and out["citations"][0]["document_id"] == "eiffel"
    assert out["cited_answer"].content[0]["annotations"]
    assert namespace["record"]["citations"]
    printed = capsys.readouterr().out
    assert "used:" in printed and "->" in printed
