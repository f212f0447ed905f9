"""The decision layer (supported / used / cited), context support and the noise bound.

Mechanics on a tiny random model in fp32 and on hand-built results; behaviour on the embedded
model (the issue's five examples) in the slow tests at the end.
"""

import json
import math

import pytest
import torch

from attribot_rag import AttributionResult, Attributor, SpanScore, split_source, split_text
from attribot_rag.decisions import DEFAULT_RULE, LOO_ONLY_RULE, DecisionRule
from attribot_rag.engine import LikelihoodEngine
from attribot_rag.noise import Noise, calibration, estimate
from attribot_rag.prompt import PromptBuilder
from attribot_rag.result import ContextSupport
from attribot_rag.spans import Source

Q = "Who built the tower?"
A = "Gustave Eiffel built the tower in 1889. Paris is in France."


def _hand_built(doc_scores, lift, sufficiency, answer="It was built in 1889.", noise=None):
    """A result with one one-sentence source per score; each sentence scores its document's score."""
    srcs = [split_source(Source(f"d{i}", f"Document {i} says something.")) for i in range(len(doc_scores))]
    ans = split_text(answer, None)
    per = lambda s: [s / len(ans)] * len(ans)  # noqa: E731
    rows = [[SpanScore(i, 0, s, per(s), "m")] for i, s in enumerate(doc_scores)]
    docs = [SpanScore(i, None, s, per(s), "m") for i, s in enumerate(doc_scores)]
    support = ContextSupport(lift=list(lift), sufficiency=[list(r) for r in sufficiency],
                             answer_tokens=[6] * len(ans), scored_by="m")
    return AttributionResult(Q, answer, srcs, ans, docs, rows, "hierarchical", support=support, noise=noise)


# ------------------------------------------------------------------------------ context support
def test_context_support_equals_independent_uncached_passes(tiny, sources):
    """lift = log p(answer | all) - log p(answer | none); sufficiency(d) = log p(answer | d alone) - none."""
    res = Attributor(tiny, strategy="batched").attribute(Q, sources, A)
    builder, engine = PromptBuilder(tiny.tokenizer), LikelihoodEngine(tiny.model, mode="exact")
    answer = builder.encode_answer(A).ids

    def loglik(keep):
        prompt = builder.encode_prompt(Q, res.sources, keep=keep)
        full, _ = engine.answer_logprobs(prompt, [], answer, mode="exact")
        return float(full.sum())

    none = loglik(())
    assert res.support.total_lift == pytest.approx(loglik(None) - none, abs=1e-4)
    for d in range(len(sources)):
        assert res.support.document_sufficiency[d] == pytest.approx(loglik((d,)) - none, abs=1e-4)
    assert sum(res.support.answer_tokens) == len(answer) and len(res.support.lift) == len(res.answer_sentences)
    assert res.timing["context_support"]["forward_passes"] >= 1


def test_context_support_false_skips_the_passes_and_keeps_the_loo_scores(tiny, sources):
    """Ranking only: no support passes, the same LOO scores, verdicts from LOO alone (supported is None)."""
    from attribot_rag import ConfigError

    att = Attributor(tiny, strategy="batched")
    full = att.attribute(Q, sources, A)
    bare = att.attribute(Q, sources, A, context_support=False)
    assert bare.support is None and bare.supported is None and bare.to_dict()["support"] is None
    assert bare.timing["context_support"]["forward_passes"] == 0
    work = lambda r: {m: (c["forward_passes"], c["forward_tokens"]) for m, c in r.timing["models"].items()}  # noqa: E731
    assert work(bare) == work(full)  # support passes were never counted as LOO work
    for rf, rb in zip(full.sentence_scores, bare.sentence_scores):
        assert [x.score for x in rb] == pytest.approx([x.score for x in rf], abs=1e-5)
    assert bare.decisions().used == bare.decisions(DEFAULT_RULE).used
    with pytest.raises(ConfigError, match="context_support"):
        att.attribute(Q, sources, A, context_support="no")


def test_no_documents_prompt_holds_no_source_text(tok, sources):
    text = PromptBuilder(tok).prompt_text(Q, [split_source(s) for s in sources])
    empty = "".join(PromptBuilder(tok).tokenizer.decode(PromptBuilder(tok).encode_prompt(Q, sources, keep=())))
    assert "Eiffel Tower was built" in text and "Eiffel Tower was built" not in empty and Q in empty


# ------------------------------------------------------------------------------ noise
def test_fp32_noise_is_about_zero_and_bounds_cached_vs_exact(tiny, sources):
    noise = estimate("tiny", torch.float32)
    assert noise.bound(10_000) < 2e-3
    batched = Attributor(tiny, strategy="batched").attribute(Q, sources, A)
    exact = Attributor(tiny, strategy="exact").attribute(Q, sources, A)
    n = sum(batched.support.answer_tokens)
    assert batched.noise == noise
    diffs = [abs(x.score - y.score) for rx, ry in zip(batched.sentence_scores, exact.sentence_scores)
             for x, y in zip(rx, ry)]
    assert max(diffs) <= batched.noise.bound(n)  # the engine's fp32 differences sit inside the bound


def test_bf16_noise_comes_from_the_shipped_calibration():
    table = calibration()["bfloat16"]
    assert "smollm2-135m" in table and table["smollm2-135m"] > 0.01
    own = estimate("smollm2-135m", torch.bfloat16)
    assert own.per_sqrt_token == table["smollm2-135m"] and "calibrated" in own.source
    other = estimate("some/unknown-model", "bfloat16")  # the largest calibrated coefficient, and says so
    assert other.per_sqrt_token == max(table.values()) and "no calibration" in other.source
    assert own.bound(16) == pytest.approx(4 * own.per_sqrt_token)


# ------------------------------------------------------------------------------ decisions
def test_the_rule_is_one_object():
    res = _hand_built([3.0, 0.0], [5.0], [[4.0], [0.0]])
    assert res.decisions().rule is DEFAULT_RULE
    assert res.decisions(LOO_ONLY_RULE).rule is LOO_ONLY_RULE


def test_unsupported_answer_uses_nothing_cites_nothing_marks_nothing():
    # big LOO scores, but the context lowers the answer's likelihood: an invented answer
    res = _hand_built([4.0, 2.0, 0.0], [-1.5], [[0.5], [-2.0], [0.0]])
    v = res.decisions()
    assert v.supported is False and v.answer_sentences[0].supported is False
    assert v.used == [False, False, False] and v.citations == [] and v.marks == {}
    assert res.marked_answer() == res.answer and res.used_sources() == []
    # today's LOO-only rule would have cited them
    assert res.decisions(LOO_ONLY_RULE).used == [True, True, False]
    d = json.loads(res.to_json())
    assert d["supported"] is False and d["cited"] == [] and all(not s["used"] for s in d["sources"])


def test_redundant_evidence_is_used_by_sufficiency():
    # d0 and d1 hold the same fact: LOO ~0 for each, but each alone supports the answer
    res = _hand_built([0.05, 0.02, -0.1, 6.0], [8.0], [[7.5], [7.4], [-1.0], [5.0]])
    v = res.decisions()
    assert v.supported is True
    assert [s.used for s in v.sources] == [True, True, False, True]
    assert v.sources[0].evidence == ("sufficiency",) and "leave-one-out" in v.sources[3].evidence
    assert set(v.marks[0]) == {1, 2, 4}  # both copies and the LOO source mark the answer
    assert v.cited_sources[0] in (0, 1, 3) and 2 not in v.cited_sources
    assert res.decisions(DecisionRule(min_sufficiency=None)).used == [False, False, False, True]


def test_sufficiency_over_the_median_source_ignores_the_generic_context_effect():
    # every document alone lifts the answer by ~2 nats (any document puts the model in "answer" mode);
    # d3 lifts it by 7: only d3 is evidence once the typical source's lift is taken off
    res = _hand_built([0.0, 0.1, -0.1, 0.2, 0.0], [8.0], [[2.0], [2.2], [1.9], [7.0], [2.1]])
    generic = DecisionRule(sufficiency_over="none", min_sufficiency=0.5, sufficiency_ratio=0.25)
    over = DecisionRule(sufficiency_over="median", min_sufficiency=0.5, sufficiency_ratio=0.25)
    assert res.decisions(generic).used == [True, True, True, True, True]
    v = res.decisions(over)
    assert v.used == [False, False, False, True, False] and v.marks == {0: [4]}
    # the measured sufficiency is what the verdict reports, not the excess it was decided on
    assert v.sources[3].sufficiency == pytest.approx(7.0) and v.sources[3].evidence == ("sufficiency",)
    # two copies of the evidence both stand out over the median of the distractors
    dup = _hand_built([0.0, 0.1, -0.1, 0.2, 0.0], [8.0], [[2.0], [6.8], [1.9], [7.0], [2.1]])
    assert dup.decisions(over).used == [False, True, False, True, False]


def test_unsupported_answer_sentence_gets_no_citation_or_marker():
    answer = "It was built in 1889. The moon is made of cheese."
    res = _hand_built([6.0, 0.2], [9.0, -0.5], [[8.0, -0.5], [0.1, 0.0]], answer=answer)
    v = res.decisions()
    assert [a.supported for a in v.answer_sentences] == [True, False]
    assert 1 not in v.marks and v.marks.get(0) == [1]
    assert all(1 not in c.answer_sentences for c in v.citations)
    d = res.to_dict()
    assert [set(a) for a in d["answer_sentences"]] == [{"index", "text", "start", "end", "supported", "score"}] * 2
    # score: the support score the verdict used (the default rule: the larger of the context's lift, -0.5,
    # and the best single source's, 0.0)
    assert d["answer_sentences"][1]["supported"] is False and d["answer_sentences"][1]["score"] == 0.0
    lift_only = res.decisions(DEFAULT_RULE.with_options(support_from="lift"))
    assert lift_only.answer_sentences[1].score == -0.5


def test_thresholds_respect_the_noise_bound():
    loud = Noise("bfloat16", 2.0, "test")  # bound over 6 tokens ~ 4.9 nats
    res = _hand_built([3.0, 0.0], [4.0], [[4.0], [0.0]], noise=loud)
    assert res.decisions().supported is False  # a 4-nat lift is within this noise
    assert _hand_built([3.0, 0.0], [4.0], [[4.0], [0.0]]).decisions().supported is True
    quiet = Noise("float32", 1e-5, "test")
    assert _hand_built([3.0, 0.0], [4.0], [[4.0], [0.0]], noise=quiet).decisions().used == [True, False]


def test_result_without_support_scores_rests_on_loo():
    res = _hand_built([3.0, 0.0], [4.0], [[4.0], [0.0]])
    res.support = None
    v = res.decisions()
    assert v.supported is None and v.used == [True, False] and v.answer_sentences[0].supported is None


def test_rule_validation_and_overrides():
    from attribot_rag import ConfigError

    for bad in ({"min_loo": math.nan}, {"min_share": 2}, {"noise_factor": -1}, {"mark_top_k": -1},
                {"min_lift": "1"}, {"sufficiency_over": "mean"}, {"support_from": "all"}):
        with pytest.raises(ConfigError):
            DecisionRule(**bad)
    assert DEFAULT_RULE.with_options() is DEFAULT_RULE
    assert DEFAULT_RULE.with_options(min_share=None).min_share is None


# ------------------------------------------------------------------------------ the embedded model
CURIE = [
    {"id": "curie", "text": "Marie Curie was a physicist and chemist who did pioneering research on radioactivity. "
                            "She was the first woman to win a Nobel Prize."},
    {"id": "polonium", "text": "Polonium is a chemical element with the symbol Po. It was discovered in 1898 by "
                               "Marie and Pierre Curie."},
    {"id": "radium", "text": "Radium is a chemical element with the symbol Ra. The Curies discovered it in December "
                             "1898, a few months after they had discovered polonium in July 1898."},
    {"id": "seine", "text": "The Seine is a river in northern France. Its length is 777 kilometres. It flows "
                            "through Paris."},
]
PARIS = [
    {"id": "eiffel", "title": "Eiffel Tower", "text": "The Eiffel Tower is a wrought-iron lattice tower in Paris. "
     "It was designed by the engineering company of Gustave Eiffel and completed in 1889."},
    {"id": "louvre", "title": "Louvre", "text": "The Louvre is the world's most-visited art museum. It is home to "
                                                "the Mona Lisa."},
    {"id": "statue", "title": "Statue of Liberty", "text": "The Statue of Liberty was a gift from France to the "
     "United States. Gustave Eiffel built its internal iron frame."},
]


@pytest.fixture(scope="module")
def embedded():
    """The default scorer as a user gets it (default dtype for this machine)."""
    import os

    if os.environ.get("ATTRIBOT_SKIP_REAL_MODELS"):
        pytest.skip("ATTRIBOT_SKIP_REAL_MODELS is set")
    return Attributor()


@pytest.mark.slow
def test_made_up_answer_gets_no_citations(embedded):
    res = embedded.attribute("How tall is the Eiffel Tower?", CURIE, "The Eiffel Tower is 330 metres tall.")
    v = res.decisions()
    assert v.supported is False and not any(v.used) and v.citations == [] and res.marked_answer() == res.answer


@pytest.mark.slow
def test_puffins_are_not_used_for_the_lighthouse(embedded):
    from attribot_rag.docs_io import EXAMPLE_DOCS, load_docs

    res = embedded.attribute("Who designed the lighthouse?", load_docs(EXAMPLE_DOCS),
                             "The lighthouse was designed by Ingrid Holmsen.")
    used = [s.id for s in res.used_sources()]
    assert res.supported and "puffins" not in used and "holmsen" in used


# SmolLM2-135M (bf16 on this CPU) does not find these correct answers supported: the 1898 fact lifts the
# answer by -0.8 nats (best single source +0.4), "completed in 1889" by +1.6 (best +2.3), under the
# 3-nat bar chosen on HotpotQA train. Qwen2.5-Coder-0.5B does (polonium +4.6). Strict: a change that
# fixes them must say so here.
SMOLLM2_LIMIT = pytest.mark.xfail(strict=True, reason="SmolLM2-135M does not read this fact (measured, see above)")


@pytest.mark.slow
@pytest.mark.parametrize("order", [(0, 1, 2, 3), (3, 2, 1, 0), (2, 3, 0, 1)])
def test_evidence_present_twice_no_unrelated_source(embedded, order):
    docs = [CURIE[i] for i in order]
    res = embedded.attribute("When was polonium discovered?", docs, "Polonium was discovered in 1898.")
    assert "seine" not in [s.id for s in res.used_sources()]


@pytest.mark.slow
@SMOLLM2_LIMIT
@pytest.mark.parametrize("order", [(0, 1, 2, 3), (3, 2, 1, 0)])
def test_evidence_present_twice_is_still_used(embedded, order):
    docs = [CURIE[i] for i in order]
    res = embedded.attribute("When was polonium discovered?", docs, "Polonium was discovered in 1898.")
    assert res.supported and "polonium" in [s.id for s in res.used_sources()]


@pytest.mark.slow
def test_top_citation_is_a_used_source(embedded):
    res = embedded.attribute("When was the Eiffel Tower completed?", PARIS, "The Eiffel Tower was completed in 1889.")
    v = res.decisions()
    used = [s.id for s in res.used_sources()]
    assert "louvre" not in used
    assert all(res.sources[c.source_index].id in used for c in v.citations)
    assert all(res.sources[n - 1].id in used for ns in v.marks.values() for n in ns)


@pytest.mark.slow
@SMOLLM2_LIMIT
def test_eiffel_completion_is_supported_by_the_eiffel_page(embedded):
    res = embedded.attribute("When was the Eiffel Tower completed?", PARIS, "The Eiffel Tower was completed in 1889.")
    assert res.supported and "eiffel" in [s.id for s in res.used_sources()]


@pytest.mark.slow
def test_a_supported_answer_does_not_use_everything(embedded):
    res = embedded.attribute("Who discovered polonium?", CURIE, "Polonium was discovered by Marie and Pierre Curie.")
    used = [s.id for s in res.used_sources()]
    assert res.supported and "polonium" in used and "seine" not in used and len(used) < len(CURIE)


def test_readme_trust_block_is_generated_from_the_committed_json():
    from pathlib import Path

    from benchmarks import trust

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start, end = readme.index(trust.MARKERS[0]) + len(trust.MARKERS[0]), readme.index(trust.MARKERS[1])
    assert readme[start:end].strip() == trust.readme_block().strip()


def test_trust_runs_of_another_strategy_are_named_and_labelled():
    import json
    from pathlib import Path

    from benchmarks import trust

    assert trust.run_name("m") == trust.run_name("m", "hierarchical") == "m"
    assert trust.records_path(trust.run_name("m", "masked"), Path("x")).name == "trust_records_m_masked.jsonl"
    summary = json.loads((trust.OUT / "trust_smollm2-135m.json").read_text())
    assert "strategy `" not in trust.render_markdown(summary)  # the default's table reads as before
    masked = trust.render_markdown({**summary, "strategy": "masked", "approximate_loo": True})
    assert "strategy `masked` (approximate leave-one-out scores; the support and sufficiency passes exact)" in masked
