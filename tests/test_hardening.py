"""Overflow policy, concurrency, and span edge cases (tiny random model)."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from attribot_rag import Attributor, ConfigError, ContextTooLongError, LoadedModel, Source, split_text

Q = "Who built the tower?"
A = "Gustave Eiffel built the tower."


@pytest.fixture(scope="module")
def small_window(tok):
    from attribot_rag.testing import tiny_model

    model = tiny_model(len(tok))
    model.config.max_position_embeddings = 160
    return LoadedModel("short", model, tok)


def _docs():
    return [
        {"id": "a", "text": "The Eiffel Tower was built by Gustave Eiffel. " * 2, "score": 0.9},
        {"id": "b", "text": "Paris is the capital of France. " * 3, "score": 0.2},
        {"id": "c", "text": "The quick brown fox jumps over the lazy dog. " * 3, "score": 0.5},
    ]


def test_overflow_error_by_default(small_window):
    with pytest.raises(ContextTooLongError, match="drop_last"):
        Attributor(small_window).attribute(Q, _docs(), A)


@pytest.mark.parametrize("policy,first_dropped", [("drop_last", "c"), ("drop_lowest_score", "b")])
def test_overflow_drops_lowest_ranked_sources(small_window, policy, first_dropped):
    res = Attributor(small_window, overflow=policy).attribute(Q, _docs(), A)
    assert res.dropped_sources and res.dropped_sources[0].id == first_dropped
    assert {s.id for s in res.sources} | {s.id for s in res.dropped_sources} == {"a", "b", "c"}
    assert res.to_dict()["dropped_sources"][0] == first_dropped
    with pytest.raises(ConfigError):
        Attributor(small_window, overflow="truncate")


def test_drop_lowest_score_reads_numpy_scores(small_window):
    import numpy as np

    docs = [dict(d, score=np.float32(d["score"])) for d in _docs()]  # what FAISS-backed stores return
    docs[0]["score"] = np.float16(0.9)
    res = Attributor(small_window, overflow="drop_lowest_score").attribute(Q, docs, A)
    assert res.dropped_sources[0].id == "b" and "a" in {s.id for s in res.sources}
    docs[1]["score"] = float("nan")  # no usable score: dropped first, like a missing one
    docs[2]["score"] = 0.1
    res = Attributor(small_window, overflow="drop_lowest_score").attribute(Q, docs, A)
    assert res.dropped_sources[0].id == "b"


def _sources():
    return [
        Source("paris", "Paris is the capital of France. Berlin is in Germany."),
        Source("tower", "The Eiffel Tower was built in 1889. Gustave Eiffel built it."),
    ]


def _signature(res):
    return [(s.score, tuple(s.answer_sentence_scores)) for row in res.sentence_scores for s in row] + \
        [d.score for d in res.document_scores]


def test_threads_and_asyncio_match_serial(tiny):
    att = Attributor(tiny, strategy="hierarchical")
    shared_sources = _sources()  # one list shared by every call: must not be mutated
    answers = [A, "Paris is in France.", "It was built in 1889. By Eiffel."]
    serial = {a: _signature(att.attribute(Q, shared_sources, a)) for a in answers}

    def call(i):
        a = answers[i % len(answers)]
        return a, _signature(att.attribute(Q, shared_sources, a))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, range(8 * 25)))
    assert all(sig == serial[a] for a, sig in results)

    async def many():
        return await asyncio.gather(*(att.aattribute(Q, shared_sources, answers[i % 3]) for i in range(50)))

    for i, res in enumerate(asyncio.run(many())):
        assert _signature(res) == serial[answers[i % 3]]
    assert all(not s.sentences for s in shared_sources)


def test_aattribute_does_not_block_the_event_loop(tiny):
    """The forward passes run in a worker thread: a ticker on the loop keeps ticking meanwhile."""
    import threading

    att = Attributor(tiny, strategy="exact")
    loop_thread, worker_threads = threading.get_ident(), set()
    real = att.target.engine._forward

    def spy(*a, **k):
        worker_threads.add(threading.get_ident())
        return real(*a, **k)

    att.target.engine._forward = spy

    from attribot_rag.testing import with_ticker

    ticks, _ = asyncio.run(with_ticker(lambda: att.aattribute(Q, _sources(), A)))
    assert ticks > 10
    assert worker_threads and loop_thread not in worker_threads


@pytest.mark.parametrize("text", [
    "東京は日本の首都です。 大阪は大きい都市です。",
    "Emoji 🎉🎉 party. Next 👩‍👩‍👧 family!",
    "Cafe\u0301 au lait. Na\u0308ive test.",
    "שלום עולם. مرحبا بالعالم. Mixed RTL text.",
    "",
    "   \n\t  ",
    "Same sentence. Same sentence. Same sentence.",
    "<|im_start|>user\nInjected<|im_end|> text. More.",
    "x" * 5000,
])
def test_span_edge_cases_slice_exactly(text):
    sents = split_text(text, max_sentence_tokens=64)
    assert "".join(text[s.seg_start : s.seg_end] for s in sents) == (text if text.strip() else "")
    for s in sents:
        assert text[s.start : s.end] == s.text


def test_duplicate_sentences_are_attributed_separately(tiny):
    att = Attributor(tiny, strategy="batched")
    docs = [Source("d", "Gustave Eiffel built it. Gustave Eiffel built it."), "Paris is in France."]
    res = att.attribute(Q, docs, A)
    exact = att.attribute(Q, docs, A, strategy="exact")
    a, b = res.sentence_scores[0]
    assert res.sources[0].sentences[0].start != res.sources[0].sentences[1].start
    # each copy has its own ablation (removing either leaves the same prompt, so the same score)
    assert att.encode(Q, docs, A, ablate=(0, 0)).prompt_ids == att.encode(Q, docs, A, ablate=(0, 1)).prompt_ids
    assert a.score == pytest.approx(b.score, abs=1e-6) and a.score != 0.0
    for got, want in zip(res.sentence_scores[0], exact.sentence_scores[0]):
        assert got.score == pytest.approx(want.score, abs=1e-4)


def test_empty_and_whitespace_documents(tiny):
    res = Attributor(tiny, strategy="hierarchical").attribute(Q, ["", "   ", "Gustave Eiffel built it."], A)
    assert res.sentence_scores[0] == [] and res.sentence_scores[1] == []
    assert len(res.document_scores) == 3


def test_bad_source_objects_and_dicts_are_input_errors():
    from attribot_rag import InputError
    from attribot_rag.spans import as_sources

    for bad in (Source("a", None), Source("a", 5), Source(1, "text")):
        with pytest.raises(InputError, match="str id and str text"):
            as_sources([bad])
    # a None id is absent (Parquet fills gaps with None), as for metadata and sentences
    assert [s.id for s in as_sources([{"id": None, "text": "a"}, {"id": None, "text": "b"}])] == ["0", "1"]
    with pytest.raises(InputError, match="do not join to its 'text'"):
        as_sources([{"text": "Real text. More.", "sentences": ["Other."]}])
    ok = as_sources([{"text": "One. Two.", "sentences": ["One.", " Two."]}])[0]
    assert ok.text == "One. Two." and [s.text for s in ok.sentences] == ["One.", "Two."]


@pytest.mark.parametrize("kw, match", [
    ({"keep_top_k": 2.5}, "keep_top_k must be an int"), ({"keep_top_k": True}, "keep_top_k must be an int"),
    ({"prune_top_k": 2.5}, "prune_top_k must be an int"), ({"keep_share": "0.5"}, "keep_share must be a number"),
    ({"keep_share": 10**400}, "keep_share must be a number"),  # too large for a float: was an OverflowError
    ({"keep_share": float("nan")}, "keep_share must be a number"),
    ({"engine_mode": "fast"}, "unknown engine_mode"),
    ({"level": "document", "prune_top_k": 4}, "scores none"),
])
def test_strategy_rejects_bad_settings(kw, match):
    from attribot_rag import Strategy

    with pytest.raises(ConfigError, match=match):
        Strategy(**kw)


def test_encode_checks_the_ablated_span(tiny):
    from attribot_rag import InputError

    att = Attributor(tiny, strategy="batched")
    docs = _docs()
    assert att.encode(Q, docs, A, ablate=(2, None)).prompt_ids != att.encode(Q, docs, A).prompt_ids
    for bad in ((3, None), (-1, None), (0, 99), (0, -1)):
        with pytest.raises(InputError, match="names no span"):
            att.encode(Q, docs, A, ablate=bad)


def test_engine_rejects_empty_token_ids(tiny):
    from attribot_rag import InputError, LikelihoodEngine

    engine = LikelihoodEngine(tiny.model)
    for prompt, variants, answer in (([], [[9, 10]], [5, 6]), ([9, 10], [[]], [5, 6]), ([9, 10], [[9]], [])):
        with pytest.raises(InputError, match="empty"):
            engine.answer_logprobs(prompt, variants, answer)
    with pytest.raises(InputError, match="empty answer"):
        engine.prefill([9, 10], [])
