import os

import pytest


@pytest.fixture(scope="session")
def tok():
    from attribot_rag.testing import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny(tok):
    from attribot_rag import LoadedModel
    from attribot_rag.testing import tiny_model

    return LoadedModel(name="tiny", model=tiny_model(len(tok)), tokenizer=tok)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tiny):
    """The tiny model saved as a local model folder (what the CLI and batch workers load)."""
    d = tmp_path_factory.mktemp("tiny-model")
    tiny.model.save_pretrained(d)
    tiny.tokenizer.save_pretrained(d)
    return d


@pytest.fixture
def tower_docs():
    """``tower_docs(n)``: n documents of three sentences that differ only by their number."""
    from attribot_rag import Source

    def make(n: int) -> list:
        return [Source(f"d{i}", f"Document {i} says tower {i} is tall. It was built in 18{i}9 by crew {i}. "
                                f"Nobody knows why {i} matters.") for i in range(n)]

    return make


@pytest.fixture
def sources():
    from attribot_rag import Source

    return [
        Source("paris", "Paris is the capital of France. Berlin is in Germany.", {"title": "Capitals"}),
        Source("tower", "The Eiffel Tower was built in 1889. Gustave Eiffel built it. The dog is lazy."),
        Source("fox", "The quick brown fox jumps over the lazy dog."),
    ]


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M in fp32 (pulled and converted on first use)."""
    if os.environ.get("ATTRIBOT_SKIP_REAL_MODELS"):
        pytest.skip("ATTRIBOT_SKIP_REAL_MODELS is set")
    from attribot_rag import load_model

    return load_model("smollm2-135m", device="cpu", dtype="fp32")


@pytest.fixture
def rendered_result():
    """A hand-scored AttributionResult over the bundled example corpus plus a document holding
    markup (for the renderers): two answer sentences, positive, negative and unscored spans."""
    from attribot_rag import AttributionResult, SpanScore, split_source, split_text
    from attribot_rag.docs_io import EXAMPLE_DOCS, EXAMPLE_QUESTION, load_docs
    from attribot_rag.spans import Source

    docs = load_docs(EXAMPLE_DOCS)[:4]
    docs.append(Source("markup", 'Beware <script>alert("x")</script> & <b>bold</b> claims. Nothing else here.',
                       {"title": "<i>Markup</i>", "url": "javascript:alert(1)"}))
    sources = [split_source(s) for s in docs]
    answer = "The lighthouse was designed by Ingrid Holmsen. It was first lit on 14 October 1897."
    # (source, sentence) -> (score for answer sentence 0, score for answer sentence 1); others unscored.
    table = {
        (0, 0): (0.4, 0.1), (0, 1): (6.0, 0.2), (0, 2): (0.1, 4.5), (0, 3): (-0.3, 0.0),
        (1, 0): (1.5, -0.2), (1, 1): (0.2, 0.0), (1, 2): (-1.2, 0.1),
        (4, 0): (0.05, 0.0), (4, 1): (0.0, -0.02),
    }
    sentence_scores = []
    for i, src in enumerate(sources):
        row = []
        for k in range(len(src.sentences)):
            if (i, k) in table:
                a, b = table[(i, k)]
                row.append(SpanScore(i, k, a + b, [a, b], "smollm2-135m"))
            else:
                row.append(SpanScore(i, k, 0.0, [0.0, 0.0], "not scored"))
        sentence_scores.append(row)
    doc_scores = [SpanScore(i, None, sum(s.score for s in row),
                            [sum(s.answer_sentence_scores[j] for s in row) for j in range(2)], "sum of sentences")
                  for i, row in enumerate(sentence_scores)]
    return AttributionResult(
        question=EXAMPLE_QUESTION, answer=answer, sources=sources, answer_sentences=split_text(answer, None),
        document_scores=doc_scores, sentence_scores=sentence_scores, strategy="hierarchical",
        timing={"total_seconds": 1.25, "generation_seconds": None,
                "models": {"smollm2-135m": {"forward_passes": 12, "forward_tokens": 3456, "seconds": 1.2}}},
    )


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance with 2 CPUs for one test module; shut down afterwards."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    assert not ray.is_initialized()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
