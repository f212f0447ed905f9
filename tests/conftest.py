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
