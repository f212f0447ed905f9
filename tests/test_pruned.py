"""Pruned-context hierarchy (issue #17): sentence LOO inside the kept documents only.

Tiny random models in fp32. The pruned sentence scores are checked against an independent
exact LOO (plain uncached forwards, built by hand) on the prompt holding only the kept documents.
"""

import pytest
import torch

from attribot_rag import Attributor, ConfigError, Cost, LikelihoodEngine, PromptBuilder, Strategy
from attribot_rag.attributor import PRESETS, is_within_kept, within_kept_label
from attribot_rag.masked import is_approximate
from attribot_rag.spans import split_source

QUESTION = "Who built the tower?"
ANSWER = "Gustave Eiffel built the tower in 1889. Paris is in France."


@pytest.fixture
def many(tower_docs):
    """Eight documents of three sentences: most of the prompt lies after any one kept document."""
    return tower_docs(8)


def _logprobs(model, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """log p(answer | prompt) per token: one plain, uncached forward."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + answer])).logits[0].float()
    rows = torch.log_softmax(logits[len(prompt) - 1 : len(prompt) - 1 + len(answer)], dim=-1)
    return rows.gather(-1, torch.tensor(answer)[:, None])[:, 0]


def _independent_loo(tiny, srcs, keep, ablation) -> float:
    """Exact LOO of ``ablation`` in the prompt holding only the ``keep`` documents, against that prompt."""
    pb = PromptBuilder(tiny.tokenizer)
    answer = pb.encode_answer(ANSWER).ids
    base = _logprobs(tiny.model, pb.encode_prompt(QUESTION, srcs, None, keep=keep), answer)
    ablated = _logprobs(tiny.model, pb.encode_prompt(QUESTION, srcs, ablation, keep=keep), answer)
    return float((base - ablated).sum())


def _kept(result) -> set[int]:
    return {s.source_index for row in result.sentence_scores for s in row if s.scored}


# ---------------------------------------------------------------- exactness
@pytest.mark.parametrize("mode", ["batched", "serial", "exact"])
def test_pruned_sentence_scores_equal_exact_loo_within_the_kept_documents(tiny, many, mode):
    strat = Strategy(level="hierarchical", keep_top_k=2, sentence_context="kept", engine_mode=mode)
    result = Attributor(tiny, strategy=strat, max_batch_size=4).attribute(QUESTION, many, ANSWER)
    keep = _kept(result)
    assert len(keep) == 2
    srcs = result.sources
    for d in keep:
        for k, span in enumerate(result.sentence_scores[d]):
            assert span.scored_by == within_kept_label("tiny") and is_within_kept(span.scored_by)
            assert span.score == pytest.approx(_independent_loo(tiny, srcs, keep, (d, k)), abs=1e-4)
            assert sum(span.answer_sentence_scores) == pytest.approx(span.score, abs=1e-5)
    # the full context gives other numbers: the pruned scores are not full-context LOO
    full = _independent_loo(tiny, srcs, None, (min(keep), 0))
    assert abs(result.sentence_scores[min(keep)][0].score - full) > 1e-4


def test_pruned_hierarchy_keeps_full_context_document_scores_and_support(tiny, many):
    full = Attributor(tiny, strategy="hierarchical").attribute(QUESTION, many, ANSWER)
    pruned = Attributor(tiny, strategy="hierarchical-pruned").attribute(QUESTION, many, ANSWER)
    assert pruned.strategy == "hierarchical-pruned"
    assert [d.score for d in pruned.document_scores] == pytest.approx([d.score for d in full.document_scores],
                                                                      abs=1e-6)
    assert all(d.scored_by == "tiny" for d in pruned.document_scores)  # documents: full-context LOO
    assert _kept(pruned) == _kept(full)  # the same documents kept
    assert pruned.support.lift == pytest.approx(full.support.lift, abs=1e-6)  # the support passes are unchanged
    assert pruned.support.scored_by == "tiny"
    d = pruned.to_dict()
    labels = {s["scored_by"] for src in d["sources"] for s in src["sentences"]}
    assert labels == {within_kept_label("tiny"), "not scored"}
    assert all(src["scored_by"] == "tiny" for src in d["sources"])
    assert all(is_within_kept(c["scored_by"]) for c in d["citations"])
    assert not is_within_kept("tiny") and not is_approximate(within_kept_label("tiny"))


def test_pruned_hierarchy_computes_fewer_tokens_than_the_full_context_one(tiny, many):
    """A mechanical count: each sentence ablation recomputes only the kept documents' tail."""
    full = Attributor(tiny, strategy="hierarchical").attribute(QUESTION, many, ANSWER)
    pruned = Attributor(tiny, strategy="hierarchical-pruned").attribute(QUESTION, many, ANSWER)
    keep = _kept(pruned)
    assert min(keep) < len(many) - len(keep), "the example must keep a document that others follow"
    tokens = [r.timing["models"]["tiny"]["forward_tokens"] for r in (full, pruned)]
    assert tokens[1] < tokens[0]
    # the saving is in the sentence pass (its base pass included); the document passes are the same work
    passes = [r.timing["passes"] for r in (full, pruned)]
    assert passes[0]["documents"] == {**passes[1]["documents"], "seconds": passes[0]["documents"]["seconds"]}
    assert passes[1]["sentences"]["forward_tokens"] < passes[0]["sentences"]["forward_tokens"]
    assert sum(p["forward_tokens"] for p in passes[1].values()) == tokens[1]


def test_keeping_every_document_is_the_full_context_hierarchy(tiny, sources):
    strat = Strategy(level="hierarchical", keep_top_k=None, sentence_context="kept")
    pruned = Attributor(tiny, strategy=strat).attribute(QUESTION, sources, ANSWER)
    full = Attributor(tiny, strategy=Strategy(level="hierarchical", keep_top_k=None)).attribute(
        QUESTION, sources, ANSWER)
    for rp, rf in zip(pruned.sentence_scores, full.sentence_scores):
        for p, f in zip(rp, rf):
            assert p.scored_by == f.scored_by == "tiny" and p.score == pytest.approx(f.score, abs=1e-6)


def test_pruned_context_with_a_proxy_and_rescoring(tiny, many):
    """Proxy first stage and target rescoring both score inside the kept documents, and say so."""
    strat = Strategy(level="hierarchical", keep_top_k=2, prune_top_k=3, sentence_context="kept")
    result = Attributor(tiny, proxy=tiny, strategy=strat).attribute(QUESTION, many, ANSWER)
    keep = _kept(result)
    scored = [s for row in result.sentence_scores for s in row if s.scored]
    assert len(scored) == 3 and all(s.scored_by == within_kept_label("tiny") for s in scored)
    for s in scored:
        assert s.score == pytest.approx(_independent_loo(tiny, result.sources, keep, (s.source_index,
                                                                                      s.sentence_index)), abs=1e-4)
    assert set(result.timing["models"]) == {"tiny", "tiny (proxy)"}


# ---------------------------------------------------------------- the engine's reused prefill
def test_prefill_reusing_another_sequences_cache_equals_a_plain_prefill(tiny, many):
    pb = PromptBuilder(tiny.tokenizer)
    srcs = [split_source(s) for s in many]
    answer = pb.encode_answer(ANSWER).ids
    full_prompt = pb.encode_prompt(QUESTION, srcs)
    kept_prompt = pb.encode_prompt(QUESTION, srcs, None, keep={1, 5})
    engine = LikelihoodEngine(tiny.model)
    full = engine.prefill(full_prompt, answer)
    full_keys = [layer.keys.clone() for layer in full.cache.layers]
    plain_cost, reuse_cost = Cost(), Cost()
    plain = engine.prefill(kept_prompt, answer, cost=plain_cost)
    reused = engine.prefill(kept_prompt, answer, cost=reuse_cost, reuse=full)
    assert torch.allclose(plain.logprobs, reused.logprobs, atol=1e-5)
    assert reuse_cost.forward_tokens < plain_cost.forward_tokens
    assert all(torch.equal(a, layer.keys) for a, layer in zip(full_keys, full.cache.layers))  # left unchanged
    # the reused prefill serves ablations like a plain one
    variants = [pb.encode_prompt(QUESTION, srcs, (5, 1), keep={1, 5})]
    _, a = engine.answer_logprobs(kept_prompt, variants, answer, prefill=reused)
    _, b = engine.answer_logprobs(kept_prompt, variants, answer, mode="exact")
    assert torch.allclose(a, b, atol=1e-5)


# ---------------------------------------------------------------- settings
def test_pruned_context_settings_are_checked():
    assert PRESETS["hierarchical-pruned"].sentence_context == "kept"
    assert Strategy().sentence_context == "full"
    with pytest.raises(ConfigError, match="unknown sentence_context"):
        Strategy(sentence_context="pruned")
    for level in ("sentence", "document"):
        with pytest.raises(ConfigError, match="level='hierarchical'"):
            Strategy(level=level, sentence_context="kept")
    with pytest.raises(ConfigError, match="masked"):
        Strategy(level="hierarchical", sentence_context="kept", engine_mode="masked")
