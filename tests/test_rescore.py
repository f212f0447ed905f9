"""Cheap first, exact last (issue #17): a first stage (masked LOO or a proxy) shortlists, the target
rescores the shortlist with exact LOO.

Tiny random models in fp32. Rescored spans are checked against exact LOO computed with uncached
forward passes (the ``"exact"`` engine mode); the others must keep their first-stage score and label.
"""

import pytest

from attribot_rag import Attributor, ConfigError, Strategy
from attribot_rag.attributor import PRESETS, check_proxy_used
from attribot_rag.masked import approximate_label, is_approximate

QUESTION = "Who built the tower?"
ANSWER = "Gustave Eiffel built the tower in 1889. Paris is in France."
EXACT_ALL = Strategy(level="hierarchical", keep_top_k=None, engine_mode="exact", name="exact-all")


@pytest.fixture
def docs(tower_docs):
    return tower_docs(5)


def _spans(result):
    return {(s.source_index, s.sentence_index): s for row in result.sentence_scores for s in row}


@pytest.fixture
def runs(tiny, docs):
    """The composed pipeline, its first stage alone, and exact LOO of every document and sentence."""
    att = Attributor(tiny, max_batch_size=4)
    return {name: att.attribute(QUESTION, docs, ANSWER, strategy=s)
            for name, s in (("rescore", "masked-rescore"), ("masked", "masked"), ("exact", EXACT_ALL))}


def test_masked_rescore_reports_exact_scores_for_its_shortlist(runs):
    rescored, first, exact = (_spans(runs[k]) for k in ("rescore", "masked", "exact"))
    k = PRESETS["masked-rescore"].prune_top_k
    shortlist = sorted(first, key=lambda a: -first[a].score)[:k]  # the first stage's best k sentences
    assert {a for a, s in rescored.items() if s.scored_by == "tiny"} == set(shortlist)
    for a in shortlist:
        assert rescored[a].score == pytest.approx(exact[a].score, abs=1e-4)
        assert rescored[a].answer_sentence_scores == pytest.approx(exact[a].answer_sentence_scores, abs=1e-4)


def test_masked_rescore_keeps_first_stage_scores_and_labels_for_the_rest(runs):
    rescored, first = _spans(runs["rescore"]), _spans(runs["masked"])
    rest = [a for a, s in rescored.items() if s.scored_by != "tiny"]
    assert len(rest) == len(rescored) - PRESETS["masked-rescore"].prune_top_k > 0
    for a in rest:
        assert rescored[a].scored_by == approximate_label("tiny") == first[a].scored_by
        assert rescored[a].score == first[a].score
    # documents: the masked pass only, labelled approximate
    assert all(is_approximate(d.scored_by) for d in runs["rescore"].document_scores)
    assert [d.score for d in runs["rescore"].document_scores] == [d.score for d in runs["masked"].document_scores]
    assert runs["rescore"].support.scored_by == "tiny"  # the support passes stay exact


def test_masked_rescore_end_to_end_labels_in_to_dict(tiny, docs):
    result = Attributor(tiny, strategy="masked-rescore").attribute(QUESTION, docs, ANSWER)
    d = result.to_dict()
    assert d["strategy"] == "masked-rescore"
    labels = [s["scored_by"] for src in d["sources"] for s in src["sentences"]]
    assert labels.count("tiny") == 8 and all(x in ("tiny", approximate_label("tiny")) for x in labels)
    assert all(is_approximate(src["scored_by"]) for src in d["sources"])
    assert all(c["scored_by"] in ("tiny", approximate_label("tiny")) for c in d["citations"])
    passes = d["timing"]["passes"]
    assert set(passes) == {"documents", "sentences", "rescoring"}
    assert sum(p["forward_tokens"] for p in passes.values()) == d["timing"]["models"]["tiny"]["forward_tokens"]
    assert d["timing"]["proxy_tokenizer"] is None  # no proxy: the first stage is the target's masked LOO


def test_masked_rescore_costs_less_than_exact_sentence_loo(runs):
    tokens = {k: r.timing["models"]["tiny"]["forward_tokens"] for k, r in runs.items()}
    assert tokens["masked"] < tokens["rescore"] < tokens["exact"]


def test_rescoring_documents_too(runs, tiny, docs):
    strat = Strategy(level="hierarchical", keep_top_k=None, engine_mode="masked", rescore_documents=2,
                     prune_top_k=3, name="masked-rescore-docs")
    result = Attributor(tiny, strategy=strat).attribute(QUESTION, docs, ANSWER)
    first, exact = runs["masked"].document_scores, runs["exact"].document_scores
    top = sorted(range(len(docs)), key=lambda d: -first[d].score)[:2]
    for d, span in enumerate(result.document_scores):
        if d in top:
            assert span.scored_by == "tiny" and span.score == pytest.approx(exact[d].score, abs=1e-4)
        else:
            assert span.scored_by == approximate_label("tiny") and span.score == first[d].score
    assert set(result.timing["passes"]) == {"documents", "rescoring documents", "sentences", "rescoring"}


def test_rescored_documents_steer_the_hierarchy(tiny, docs):
    """The documents whose sentences are scored are picked on the rescored (exact) document scores."""
    strat = Strategy(level="hierarchical", keep_top_k=1, engine_mode="masked", rescore_documents=len(docs))
    result = Attributor(tiny, strategy=strat).attribute(QUESTION, docs, ANSWER)
    best = max(range(len(docs)), key=lambda d: result.document_scores[d].score)
    assert all(d.scored_by == "tiny" for d in result.document_scores)
    assert {s.source_index for row in result.sentence_scores for s in row if s.scored} == {best}


def test_a_masked_proxy_first_stage_then_exact_target_rescoring(tiny, docs, runs):
    strat = Strategy(level="sentence", proxy=True, engine_mode="masked", prune_top_k=3)
    result = Attributor(tiny, proxy=tiny, strategy=strat).attribute(QUESTION, docs, ANSWER)
    exact = _spans(runs["exact"])
    scored = {a: s for a, s in _spans(result).items() if s.scored}
    assert len(scored) == 3  # after a proxy, only the target's rescored sentences are reported
    for a, s in scored.items():
        assert s.scored_by == "tiny" and s.score == pytest.approx(exact[a].score, abs=1e-4)
    assert set(result.timing["models"]) == {"tiny", "tiny (proxy)"}


def test_which_first_stage_scores(tiny):
    masked = PRESETS["masked-rescore"]
    assert masked.engine_mode == "masked" and masked.prune_top_k and not masked.uses_proxy
    assert masked.rescore_mode == "batched" and PRESETS["proxy-prune"].rescore_mode == "batched"
    assert Strategy(level="document", rescore_documents=2).uses_proxy  # like prune_top_k: the proxy ranks
    assert Strategy(level="document", engine_mode="masked", rescore_documents=2).uses_proxy is False
    assert Strategy(engine_mode="serial", prune_top_k=2).rescore_mode == "serial"
    with pytest.raises(ConfigError, match="does not use the proxy"):
        check_proxy_used("masked-rescore", "some-proxy")
    with pytest.raises(ConfigError, match="needs a proxy"):
        Attributor(tiny, strategy=Strategy(level="document", rescore_documents=2))


def test_rescoring_settings_are_checked():
    with pytest.raises(ConfigError, match="rescore_documents must be an int"):
        Strategy(rescore_documents=0)
    with pytest.raises(ConfigError, match="level='sentence' runs none"):
        Strategy(level="sentence", engine_mode="masked", rescore_documents=2)
