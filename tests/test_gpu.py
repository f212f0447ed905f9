"""CUDA checks (skipped without a GPU): cached + batched LOO equals exact LOO on the device."""

import pytest
import torch

from attribot_rag import Attributor, LoadedModel

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_batched_equals_exact_on_cuda(tok, sources):
    from attribot_rag.testing import tiny_model

    model = tiny_model(len(tok)).to("cuda")
    att = Attributor(LoadedModel("tiny-cuda", model, tok), strategy="exact")
    assert att.target.engine.max_batch_size == 16  # CUDA default: batches of ablations
    answer = "Gustave Eiffel built the tower in 1889."
    exact = att.attribute("Who built the tower?", sources, answer, strategy="exact")
    batched = att.attribute("Who built the tower?", sources, answer, strategy="batched")
    e = [s.score for row in exact.sentence_scores for s in row]
    b = [s.score for row in batched.sentence_scores for s in row]
    assert max(abs(x - y) for x, y in zip(e, b)) < 1e-3
    assert batched.timing["models"]["tiny-cuda"]["forward_passes"] < exact.timing["models"]["tiny-cuda"][
        "forward_passes"]
