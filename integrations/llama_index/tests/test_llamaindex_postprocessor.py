"""AttribotNodePostprocessor on a tiny random model: ranking, filtering, metadata, errors."""

import asyncio

import pytest
from attribot_rag import Source
from llama_index.core.schema import ImageNode, MetadataMode, NodeWithScore, QueryBundle, TextNode

from llama_index.postprocessor.attribot import (
    ATTRIBUTION_SCORE_KEY,
    RETRIEVAL_SCORE_KEY,
    AttribotNodePostprocessor,
    EmptyAnswerError,
    InputError,
    NodeTextError,
    NoSourcesError,
)


def _direct_scores(attributor, nodes, question, answer):
    """Document scores from attribot-rag called directly on the content the synthesizer shows the LLM."""
    sources = [Source(n.node.node_id, n.node.get_content(MetadataMode.LLM)) for n in nodes]
    return [d.score for d in attributor.attribute(question, sources, answer).document_scores]


def test_reranks_by_attribution_and_keeps_retrieval_score(attributor, nodes, question, answer):
    before = {n.node.node_id: (n.score, dict(n.node.metadata)) for n in nodes}
    expected = _direct_scores(attributor, nodes, question, answer)
    out = AttribotNodePostprocessor(attributor=attributor).postprocess_nodes(nodes, query_str=question, answer=answer)

    assert [n.score for n in out] == sorted(expected, reverse=True)
    by_id = {n.node.node_id: n for n in out}
    assert set(by_id) == set(before)
    for i, n in enumerate(nodes):
        got = by_id[n.node.node_id]
        assert got.score == pytest.approx(expected[i], abs=1e-6)
        assert got.node.metadata[RETRIEVAL_SCORE_KEY] == n.score
        assert got.node.metadata[ATTRIBUTION_SCORE_KEY] == got.score
        # The scores stay out of what the LLM and the embedder see.
        assert got.node.get_content(MetadataMode.LLM) == n.node.get_content(MetadataMode.LLM)
        assert got.node.get_content(MetadataMode.EMBED) == n.node.get_content(MetadataMode.EMBED)
    # The retriever's (docstore's) node objects are left untouched.
    assert {n.node.node_id: (n.score, n.node.metadata) for n in nodes} == before


def test_query_bundle_and_async_match(attributor, nodes, question, answer):
    pp = AttribotNodePostprocessor(attributor=attributor)
    sync = pp.postprocess_nodes(nodes, query_bundle=QueryBundle(question), answer=answer)
    asyn = asyncio.run(pp.apostprocess_nodes(nodes, query_str=question, answer=answer))
    assert [(n.node.node_id, n.score) for n in sync] == [(n.node.node_id, n.score) for n in asyn]


def test_attribution_waits_for_the_models_process_wide_lock(attributor, nodes, question, answer):
    """LangChain's components hold the same lock: a process using both runs one model call at a time."""
    import threading

    from attribot_rag import model_lock

    pp = AttribotNodePostprocessor(attributor=attributor)
    done = threading.Event()
    for call in (lambda: pp.postprocess_nodes(nodes, query_str=question, answer=answer),
                 lambda: asyncio.run(pp.apostprocess_nodes(nodes, query_str=question, answer=answer))):
        done.clear()
        with model_lock(attributor.target.loaded):
            t = threading.Thread(target=lambda c=call: (c(), done.set()))
            t.start()
            assert not done.wait(0.5)  # blocked while another user holds the model
        t.join(30)
        assert done.is_set()


def test_reattributing_keeps_the_original_retrieval_score(attributor, nodes, question, answer):
    pp = AttribotNodePostprocessor(attributor=attributor)
    once = pp.postprocess_nodes(nodes, query_str=question, answer=answer)
    twice = pp.postprocess_nodes(once, query_str=question, answer=answer)
    retrieval = {n.node.node_id: n.score for n in nodes}
    assert {n.node.node_id: n.node.metadata[RETRIEVAL_SCORE_KEY] for n in twice} == retrieval


@pytest.mark.parametrize("where", [0, 1])
def test_filter_drops_exactly_the_nodes_under_the_threshold(attributor, nodes, question, answer, where, loo_rule):
    scores = _direct_scores(attributor, nodes, question, answer)
    ranked = sorted(scores)
    threshold = (ranked[where] + ranked[where + 1]) / 2  # between two nodes' scores
    pp = AttribotNodePostprocessor(attributor=attributor, filter_unused=True, min_score=threshold, rule=loo_rule)
    attributed = pp.attribute_nodes(nodes, question, answer)
    kept = {n.node.node_id for n in attributed.nodes}
    assert kept == {n.node.node_id for n, s in zip(nodes, scores) if s > threshold}
    assert len(kept) == len(nodes) - (where + 1)
    assert {e["node_id"] for e in attributed.metadata["nodes"] if e["kept"]} == kept
    assert all(e["used"] == (e["attribution_score"] > threshold) for e in attributed.metadata["nodes"])


def test_min_share_and_top_n(attributor, nodes, question, answer, loo_rule):
    base = AttribotNodePostprocessor(attributor=attributor).attribute_nodes(nodes, question, answer)
    shares = {e["node_id"]: e["share"] for e in base.metadata["nodes"]}
    cut = sorted(shares.values())[-1]  # only the largest share passes
    pp = AttribotNodePostprocessor(attributor=attributor, filter_unused=True, min_score=-1e9, min_share=cut,
                                   rule=loo_rule)
    kept = [n.node.node_id for n in pp.postprocess_nodes(nodes, query_str=question, answer=answer)]
    assert kept == [k for k, v in shares.items() if v >= cut]
    top1 = AttribotNodePostprocessor(attributor=attributor, top_n=1).postprocess_nodes(
        nodes, query_str=question, answer=answer
    )
    assert [n.node.node_id for n in top1] == [base.nodes[0].node.node_id]


def test_citations_name_their_nodes(attributor, nodes, question, answer, loo_rule):
    attributed = AttribotNodePostprocessor(attributor=attributor, citation_top_k=3, rule=loo_rule).attribute_nodes(
        nodes, question, answer
    )
    texts = {n.node.node_id: n.node.text for n in nodes}
    contents = {n.node.node_id: n.node.get_content(MetadataMode.LLM) for n in nodes}
    assert 0 < len(attributed.citations) <= 3
    for c in attributed.citations:
        assert contents[c["node_id"]][c["content_start"]: c["content_end"]] == c["sentence"]
        if c["start"] is None:  # the cited span is the metadata header ("title: ...")
            assert c["sentence"].startswith("title: ")
        else:
            assert texts[c["node_id"]][c["start"]: c["end"]] == c["sentence"]
        assert c["node_id"] == nodes[c["source_index"]].node.node_id
    assert attributed.metadata["answer"] == answer and attributed.metadata["question"] == question
    assert attributed.metadata["scored_by"] == "tiny"


def test_bare_text_mode_passes_the_title_and_offsets_into_the_text(attributor, nodes, question, answer, loo_rule):
    pp = AttribotNodePostprocessor(attributor=attributor, metadata_mode=MetadataMode.NONE, citation_top_k=None,
                                   rule=loo_rule)
    attributed = pp.attribute_nodes(nodes, question, answer)
    assert [s.text for s in attributed.result.sources] == [n.node.text for n in nodes]
    assert [s.title for s in attributed.result.sources] == [n.node.metadata["title"] for n in nodes]
    sources = [Source(n.node.node_id, n.node.text, {"title": n.node.metadata["title"]}) for n in nodes]
    direct = attributor.attribute(question, sources, answer).document_scores
    assert [e["attribution_score"] for e in sorted(attributed.metadata["nodes"], key=lambda e: e["retrieval_rank"])] \
        == pytest.approx([d.score for d in direct], abs=1e-6)
    texts = {n.node.node_id: n.node.text for n in nodes}
    assert attributed.citations
    for c in attributed.citations:
        assert (c["start"], c["end"]) == (c["content_start"], c["content_end"])
        assert texts[c["node_id"]][c["start"]: c["end"]] == c["sentence"]


def test_duplicate_nodes_are_attributed_separately(attributor, nodes, question, answer):
    dup = [*nodes, NodeWithScore(node=nodes[0].node, score=0.1)]
    pp = AttribotNodePostprocessor(attributor=attributor)
    sources = [Source(str(i), n.node.get_content(MetadataMode.LLM)) for i, n in enumerate(dup)]
    expected = [d.score for d in attributor.attribute(question, sources, answer).document_scores]
    rows = sorted(pp.attribute_nodes(dup, question, answer).metadata["nodes"], key=lambda e: e["retrieval_rank"])
    assert len({e["retrieval_rank"] for e in rows}) == 4  # the copy is its own source, not merged
    assert [e["attribution_score"] for e in rows] == pytest.approx(expected, abs=1e-6)
    out = pp.postprocess_nodes(dup, query_str=question, answer=answer)
    assert [n.score for n in out] == pytest.approx(sorted(expected, reverse=True), abs=1e-6)


def test_bad_input_gives_clear_errors(attributor, nodes, question, answer):
    pp = AttribotNodePostprocessor(attributor=attributor)
    with pytest.raises(NoSourcesError, match="no source nodes"):
        pp.postprocess_nodes([], query_str=question, answer=answer)
    for empty in ("", "   \n"):
        with pytest.raises(EmptyAnswerError, match="empty"):
            pp.postprocess_nodes(nodes, query_str=question, answer=empty)
    with pytest.raises(EmptyAnswerError, match="after generation"):
        pp.postprocess_nodes(nodes, query_str=question)  # no answer given
    with pytest.raises(InputError, match="no question"):
        pp.postprocess_nodes(nodes, answer=answer)
    blank = NodeWithScore(node=TextNode(id_="blank", text="  "), score=0.5)
    with pytest.raises(NodeTextError, match="'blank'.*no text"):
        pp.postprocess_nodes([*nodes, blank], query_str=question, answer=answer)
    image = NodeWithScore(node=ImageNode(id_="img", image="aGVsbG8="), score=0.5)
    with pytest.raises(NodeTextError, match="'img'.*ImageNode"):
        pp.postprocess_nodes([image, *nodes], query_str=question, answer=answer)
    assert issubclass(NodeTextError, InputError) and issubclass(NoSourcesError, ValueError)


def test_default_attributor_is_the_embedded_default_model(monkeypatch):
    import llama_index.postprocessor.attribot.base as base

    made = []
    monkeypatch.setattr(base, "shared_attributor", lambda config: made.append(config) or object())
    pp = AttribotNodePostprocessor(dtype="fp32")
    assert made == []  # nothing is loaded until attribution runs
    first = pp.get_attributor()
    assert pp.get_attributor() is first and len(made) == 1
    assert made[0].model == "smollm2-135m" and made[0].dtype == "fp32" and made[0].proxy is None
    assert made[0] == pp.attributor_config()  # the core's process-wide attributor for these settings


def test_field_validation():
    with pytest.raises(ValueError):
        AttribotNodePostprocessor(top_n=0)
    with pytest.raises(ValueError):
        AttribotNodePostprocessor(min_share=1.5)


def test_nodes_the_core_drops_to_fit_the_window_stay_with_their_own_scores(loo_rule):
    """overflow='drop_lowest_score' drops a middle node: the rest keep their scores, it goes last unscored."""
    from attribot_rag import Attributor
    from attribot_rag.testing import tiny_loaded_model

    small = tiny_loaded_model()
    small.model.config.max_position_embeddings = 200  # a window the three nodes overflow
    att = Attributor(small, strategy="exact", overflow="drop_lowest_score")
    texts = {"a": "Paris is the capital of France. It is big.",
             "b": "The quick brown fox jumps over the lazy dog. " * 12,
             "c": "Berlin is in Germany. Rome is in Italy."}
    nodes = [NodeWithScore(node=TextNode(id_=k, text=t), score=s) for (k, t), s in zip(texts.items(), (0.9, 0.1, 0.5))]
    pp = AttribotNodePostprocessor(attributor=att, metadata_mode=MetadataMode.NONE, citation_top_k=None,
                                   rule=loo_rule)
    got = pp.attribute_nodes(nodes, "Capital of France?", "Paris.")
    core = got.result
    assert [s.id for s in core.dropped_sources] == ["b"]
    by_id = {s.id: d.score for s, d in zip(core.sources, core.document_scores)}
    assert [n.node.node_id for n in got.nodes][-1] == "b" and got.nodes[-1].score is None
    assert {n.node.node_id: n.score for n in got.nodes[:2]} == by_id
    rows = {r["node_id"]: r for r in got.metadata["nodes"]}
    assert rows["b"]["dropped"] and not rows["b"]["used"] and rows["b"]["retrieval_rank"] == 1
    assert rows["c"]["attribution_score"] == by_id["c"] and rows["c"]["retrieval_rank"] == 2
    cites = got.metadata["citations"]
    assert cites and all(nodes[c["source_index"]].node.node_id == c["node_id"] for c in cites)
    assert all(texts[c["node_id"]][c["start"]:c["end"]] == c["sentence"] for c in cites)
    filtered = AttribotNodePostprocessor(attributor=att, filter_unused=True, rule=loo_rule).postprocess_nodes(
        nodes, query_str="Capital of France?", answer="Paris.")
    assert {n.node.node_id for n in filtered} == {"a", "c"}
    assert "b" not in {n.node.node_id for n in filtered}


def test_citation_offsets_index_the_body_when_the_title_repeats_it(attributor, loo_rule):
    """The LLM sees "title: Paris.\n\nParis." : a citation of the body maps into node.text."""
    node = NodeWithScore(node=TextNode(id_="n1", text="Paris.", metadata={"title": "Paris."}), score=1.0)
    other = NodeWithScore(node=TextNode(id_="n2", text="Rome is in Italy."), score=0.5)
    every = loo_rule.with_options(min_citation=-1e9)  # cite every scored sentence, whatever its sign
    pp = AttribotNodePostprocessor(attributor=attributor, citation_top_k=None, rule=every)
    got = pp.attribute_nodes([node, other], "Capital of France?", "Paris.")
    body = [c for c in got.metadata["citations"] if c["node_id"] == "n1"]
    content = node.node.get_content(MetadataMode.LLM)
    assert content.count("Paris.") == 2 and [c["sentence"] for c in body] == ["Paris."]  # the header is no span
    assert [(c["content_start"], c["start"], c["end"]) for c in body] == [(content.rindex("Paris."), 0, 6)]


def test_deepcopy_shares_the_loaded_model(attributor):
    import copy

    pp = AttribotNodePostprocessor(attributor=attributor, top_n=2)
    for dup in (copy.deepcopy(pp), pp.model_copy(deep=True)):
        assert dup.top_n == 2 and dup.attributor is attributor and dup is not pp
    assert copy.deepcopy(AttribotNodePostprocessor(top_n=3)).top_n == 3


def test_bad_settings_fail_when_built_not_after_the_turn(retriever, llm, attributor):
    """A chat engine wrapper with a bad setting raises at from_defaults, before any turn reaches memory."""
    from llama_index.core.chat_engine import ContextChatEngine

    from llama_index.postprocessor.attribot import AttributedChatEngine

    engine = ContextChatEngine.from_defaults(retriever=retriever, llm=llm)
    with pytest.raises(ValueError, match="unknown strategy 'nonsense'"):
        AttributedChatEngine.from_defaults(engine, strategy="nonsense")
    with pytest.raises(ValueError, match="needs a proxy"):
        AttribotNodePostprocessor(strategy="proxy-prune")
    with pytest.raises(ValueError, match="unknown dtype .float64."):  # a DeviceError, in pydantic's ValidationError
        AttribotNodePostprocessor(dtype="float64")
    with pytest.raises(ValueError, match="not NaN"):
        AttribotNodePostprocessor(min_score=float("nan"))
    assert engine.chat_history == []
    # a given attributor brings its own strategy and model: the name-based settings are not used
    assert AttribotNodePostprocessor(attributor=attributor, dtype="float64").get_attributor() is attributor


def test_postprocessors_and_llm_share_one_model_per_process(tiny, monkeypatch):
    import attribot_rag.models as core_models

    from llama_index.postprocessor.attribot import AttribotLLM, clear_model_cache

    loads = []
    monkeypatch.setattr(core_models, "load_model", lambda name, device=None, dtype=None: loads.append(name) or tiny)
    clear_model_cache()
    try:
        a = AttribotNodePostprocessor(target="m", dtype="fp32", device="cpu").get_attributor()
        b = AttribotNodePostprocessor(target="m", dtype="float32", device="cpu", strategy="batched").get_attributor()
        llm = AttribotLLM("m", dtype="fp32", device="cpu")
        assert loads == ["m"] and a.target.loaded is b.target.loaded is llm.loaded
        AttribotNodePostprocessor(target="m", dtype="bf16", device="cpu").get_attributor()
        assert loads == ["m", "m"]  # another dtype is another copy
        from attribot_rag.models import default_dtype

        default = AttribotNodePostprocessor(target="m", device="cpu").get_attributor()  # dtype None
        named = "fp32" if str(default_dtype("cpu")) == "torch.float32" else "bf16"
        assert AttribotNodePostprocessor(target="m", dtype=named, device="cpu").get_attributor().target.loaded \
            is default.target.loaded and loads == ["m", "m"]  # the device's default dtype is the same copy
    finally:
        clear_model_cache()


def test_class():
    """The LlamaHub convention: each class is the LlamaIndex component it claims to be."""
    from llama_index.core.base.base_query_engine import BaseQueryEngine
    from llama_index.core.base.llms.base import BaseLLM
    from llama_index.core.chat_engine.types import BaseChatEngine
    from llama_index.core.postprocessor.types import BaseNodePostprocessor

    from llama_index.postprocessor.attribot import AttribotLLM, AttributedChatEngine, AttributedQueryEngine

    for cls, base in ((AttribotNodePostprocessor, BaseNodePostprocessor), (AttribotLLM, BaseLLM),
                      (AttributedQueryEngine, BaseQueryEngine), (AttributedChatEngine, BaseChatEngine)):
        assert base.__name__ in [b.__name__ for b in cls.__mro__], cls


def test_attribution_is_reported_to_llamaindex_tracing(attributor, nodes, question, answer):
    """ReRank instrumentation events, a span, and a RERANKING callback event, as LlamaIndex rerankers emit."""
    from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler

    seen = []

    class Collect(BaseEventHandler):
        def handle(self, event, **kwargs):
            seen.append(event)

    root, debug, spans = get_dispatcher(), LlamaDebugHandler(), SimpleSpanHandler()
    handler = Collect()
    root.add_event_handler(handler)
    root.add_span_handler(spans)
    try:
        pp = AttribotNodePostprocessor(attributor=attributor, callback_manager=CallbackManager([debug]))
        attributed = pp.attribute_nodes(nodes, question, answer)
        asyncio.run(pp.aattribute_nodes(nodes, question, answer))
    finally:
        root.event_handlers.remove(handler)
        root.span_handlers.remove(spans)
    names = [type(e).__name__ for e in seen]
    assert names.count("ReRankStartEvent") == names.count("ReRankEndEvent") == 2
    end = next(e for e in seen if type(e).__name__ == "ReRankEndEvent")
    assert [n.node.node_id for n in end.nodes] == [n.node.node_id for n in attributed.nodes]
    start = next(e for e in seen if type(e).__name__ == "ReRankStartEvent")
    assert start.model_name == "tiny" and start.query == question and len(start.nodes) == len(nodes)
    assert len(debug.get_event_pairs(CBEventType.RERANKING)) == 2
    assert sum("attribute_nodes" in s.id_ for s in spans.completed_spans) == 2


def test_the_default_rule_is_the_cores(attributor, loo_rule):
    """No integration-specific thresholds: left alone, the rule in force *is* the core's DEFAULT_RULE."""
    from dataclasses import replace

    from attribot_rag.decisions import DEFAULT_RULE

    assert AttribotNodePostprocessor().resolved_rule() is DEFAULT_RULE
    assert AttribotNodePostprocessor(attributor=attributor, filter_unused=True).resolved_rule() is DEFAULT_RULE
    # min_score / min_share override the rule's min_loo / min_share; min_share=0 disables the share check
    assert AttribotNodePostprocessor(min_score=0.3, min_share=0.0).resolved_rule() == replace(
        DEFAULT_RULE, min_loo=0.3, min_share=0.0)
    assert AttribotNodePostprocessor(rule=loo_rule).resolved_rule() is loo_rule
    assert AttribotNodePostprocessor(rule=loo_rule, min_share=0.2).resolved_rule() == replace(loo_rule, min_share=0.2)
    with pytest.raises(ValueError, match="finite"):
        AttribotNodePostprocessor(min_score=float("-inf"))


def test_an_unsupported_answer_keeps_no_node_and_gets_no_citations(attributor, nodes, question, answer, loo_rule):
    """A random model's context does not support the answer: no citations, filter_unused keeps nothing."""
    pp = AttribotNodePostprocessor(attributor=attributor, filter_unused=True, citation_top_k=None)
    got = pp.attribute_nodes(nodes, question, answer)
    assert got.result.decisions().supported is False
    assert got.nodes == [] and got.citations == [] and got.metadata["supported"] is False
    assert not any(e["used"] or e["kept"] for e in got.metadata["nodes"])
    assert got.result.marked_answer() == answer  # no [n] markers either
    assert pp.postprocess_nodes(nodes, query_str=question, answer=answer) == []
    # overrides of min_score / min_share cannot bring nodes back: the answer is not supported
    loose = AttribotNodePostprocessor(attributor=attributor, filter_unused=True, min_score=-1e9, min_share=0.0)
    assert loose.postprocess_nodes(nodes, query_str=question, answer=answer) == []
    # under a rule that ignores support the same inputs keep nodes and are cited: the verdict emptied them
    cited = AttribotNodePostprocessor(attributor=attributor, filter_unused=True, citation_top_k=None, rule=loo_rule)
    both = cited.attribute_nodes(nodes, question, answer)
    assert both.nodes and both.citations and both.metadata["supported"] is None
    # without filtering, every node is still returned, ranked, but none is used
    ranked = AttribotNodePostprocessor(attributor=attributor).attribute_nodes(nodes, question, answer)
    assert len(ranked.nodes) == len(nodes) and ranked.citations == []


def test_metadata_reports_support_answer_sentences_and_noise(attributor, nodes, question, answer):
    import json

    got = AttribotNodePostprocessor(attributor=attributor).attribute_nodes(nodes, question, answer)
    meta = got.metadata
    json.dumps({k: v for k, v in meta.items() if k != "timing"}, allow_nan=False)
    verdicts = got.result.decisions()
    assert meta["supported"] is verdicts.supported is False
    assert meta["noise"] == pytest.approx(verdicts.noise) and meta["noise"] > 0
    assert len(meta["answer_sentences"]) == len(got.result.answer_sentences) == 2
    for s, v in zip(meta["answer_sentences"], verdicts.answer_sentences):
        assert {"text", "start", "end", "supported", "score"} <= set(s)
        assert answer[s["start"]:s["end"]] == s["text"] == v.text
        assert s["supported"] is v.supported and s["score"] == pytest.approx(v.score)
    by_id = {e["node_id"]: e for e in meta["nodes"]}
    assert [by_id[s.id]["used"] for s in got.result.sources] == verdicts.used


def test_cited_nodes_and_the_untouched_retrieved_nodes(attributor, nodes, question, answer, loo_rule):
    got = AttribotNodePostprocessor(attributor=attributor, rule=loo_rule).attribute_nodes(nodes, question, answer)
    assert all(a is b for a, b in zip(got.retrieved, nodes)) and len(got.retrieved) == len(nodes)
    used = [e for e in got.metadata["nodes"] if e["used"]]
    assert [n.node.node_id for n in got.cited_nodes] == [e["node_id"] for e in used]
    retrieval = {n.node.node_id: n.score for n in nodes}
    for cited, e in zip(got.cited_nodes, used):
        assert cited.score == retrieval[cited.node.node_id]  # never the attribution score
        assert cited.node.metadata[ATTRIBUTION_SCORE_KEY] == e["attribution_score"]
    assert all(ATTRIBUTION_SCORE_KEY not in n.node.metadata for n in nodes)  # the docstore's nodes are untouched


def test_a_source_label_is_scored_but_not_cited_unless_turned_off(attributor, loo_rule):
    every = loo_rule.with_options(min_citation=-1e9)
    labelled = [NodeWithScore(node=TextNode(id_="a", text="Source 1:\nParis is in France. Rome is in Italy.\n"),
                              score=0.5),
                NodeWithScore(node=TextNode(id_="b", text="Source 2:\nBerlin is in Germany.\n"), score=0.4)]
    pp = AttribotNodePostprocessor(attributor=attributor, rule=every, citation_top_k=None)
    got = pp.attribute_nodes(labelled, "Where is Paris?", "Paris is in France.")
    assert [s.prefix for s in got.result.sources] == ["Source 1:\n", "Source 2:\n"]
    assert got.citations and not any("Source" in c["sentence"] for c in got.citations)
    for c in got.citations:
        text = next(n.node.text for n in labelled if n.node.node_id == c["node_id"])
        assert text[c["start"]:c["end"]] == c["sentence"]
    off = AttribotNodePostprocessor(attributor=attributor, rule=every, citation_top_k=None, uncitable_prefix=None)
    assert [s.prefix for s in off.attribute_nodes(labelled, "Where is Paris?", "Paris.").result.sources] == ["", ""]
    with pytest.raises(ValueError, match="regular expression"):
        AttribotNodePostprocessor(uncitable_prefix="(")


def test_a_loaded_model_as_target_is_shared_and_serialized_by_name(tiny):
    pp = AttribotNodePostprocessor(target=tiny)
    assert pp.get_attributor().target.loaded is tiny
    assert pp.to_dict()["target"] == "tiny"
