"""Mechanics of the likelihood engine on a tiny random model (fp32)."""

import pytest
import torch

from attribot_rag import ConfigError, Cost, LikelihoodEngine, PromptBuilder
from attribot_rag.engine import common_prefix_len
from attribot_rag.spans import split_source

QUESTION = "Who built the tower?"
ANSWER = "Gustave Eiffel built the tower in 1889. Paris is in France."


def _inputs(tok, sources):
    pb = PromptBuilder(tok)
    srcs = [split_source(s) for s in sources]
    abls = [(d, k) for d, s in enumerate(srcs) for k in range(len(s.sentences))] + [(d, None) for d in range(3)]
    return (pb.encode_prompt(QUESTION, srcs), [pb.encode_prompt(QUESTION, srcs, a) for a in abls],
            pb.encode_answer(ANSWER).ids)


@pytest.mark.parametrize("mode,kw", [
    ("serial", {}),
    ("batched", {"max_batch_size": 16}),
    ("batched", {"max_batch_tokens": 200, "max_batch_size": 16}),  # forces many small batches
    ("batched", {"max_batch_size": 3, "max_recompute": 10.0}),  # mixes far-apart prefixes
])
def test_cached_modes_equal_exact(tiny, tok, sources, mode, kw):
    prompt, variants, answer = _inputs(tok, sources)
    exact_full, exact_abl = LikelihoodEngine(tiny.model, mode="exact").answer_logprobs(prompt, variants, answer)
    cost = Cost()
    full, abl = LikelihoodEngine(tiny.model, mode=mode, **kw).answer_logprobs(prompt, variants, answer, cost=cost)
    assert torch.allclose(full, exact_full, atol=1e-4)
    assert torch.allclose(abl, exact_abl, atol=1e-4)
    assert cost.forward_passes >= 1 and cost.forward_tokens > 0
    # ablations really change the prompt: LOO is not identically zero
    assert (exact_full[None] - exact_abl).abs().sum() > 1e-3


def test_batching_and_caching_save_work(tiny, tok, sources):
    prompt, variants, answer = _inputs(tok, sources)
    costs = {}
    for mode in ("exact", "serial", "batched"):
        costs[mode] = Cost()
        engine = LikelihoodEngine(tiny.model, mode=mode, max_batch_size=16)
        engine.answer_logprobs(prompt, variants, answer, cost=costs[mode])
    assert costs["serial"].forward_tokens < costs["exact"].forward_tokens
    assert costs["serial"].forward_passes == costs["exact"].forward_passes == len(variants) + 1
    assert costs["batched"].forward_passes < costs["serial"].forward_passes


def test_memory_cap_bounds_every_batch(tiny, tok, sources):
    prompt, variants, answer = _inputs(tok, sources)
    engine = LikelihoodEngine(tiny.model, max_batch_tokens=300, max_batch_size=16)
    seen = []
    real = engine._forward

    def spy(input_ids, cost, cache=None, **kw):
        past = cache.get_seq_length() if cache is not None and input_ids.shape[0] > 1 else 0
        seen.append((input_ids.shape[0], past + input_ids.shape[1]))
        return real(input_ids, cost, cache=cache, **kw)

    engine._forward = spy
    engine.answer_logprobs(prompt, variants, answer)
    assert all(b * length <= 300 for b, length in seen[1:] if b > 1)
    assert any(b > 1 for b, _ in seen[1:])


def test_sliding_window_model_recomputes_prefix(tok, sources):
    from attribot_rag.testing import tiny_model

    model = tiny_model(len(tok), sliding_window=32)
    prompt, variants, answer = _inputs(tok, sources)
    exact = LikelihoodEngine(model, mode="exact").answer_logprobs(prompt, variants, answer)
    batched = LikelihoodEngine(model, max_batch_size=8).answer_logprobs(prompt, variants, answer)
    assert torch.allclose(exact[1], batched[1], atol=1e-4)


def test_bad_engine_settings():
    with pytest.raises(ConfigError):
        LikelihoodEngine(torch.nn.Linear(1, 1), mode="fast")
    with pytest.raises(ConfigError):
        LikelihoodEngine(torch.nn.Linear(1, 1), max_batch_tokens=0)


def test_common_prefix_len():
    assert common_prefix_len([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_len([], [1]) == 0
    assert common_prefix_len([5, 6], [5, 6]) == 2


def test_cpu_defaults_run_one_ablation_at_a_time(tiny):
    engine = LikelihoodEngine(tiny.model)
    assert engine.max_batch_size == 1 and engine.max_batch_tokens == 4096


def test_prefill_is_reused(tiny, tok, sources):
    prompt, variants, answer = _inputs(tok, sources)
    engine = LikelihoodEngine(tiny.model)
    pre = engine.prefill(prompt, answer)
    cost = Cost()
    full, abl = engine.answer_logprobs(prompt, variants[:2], answer, prefill=pre, cost=cost)
    assert cost.forward_passes == 2 and torch.equal(full, pre.logprobs)


def test_out_of_memory_retries_after_the_failed_pass_is_freed(tiny, tok, sources):
    """The halves run after the except block: the failed pass's tensors (held by the traceback) are gone."""
    import weakref

    prompt, variants, answer = _inputs(tok, sources)
    engine = LikelihoodEngine(tiny.model, max_batch_size=8)
    real, refs, alive_at_retry = engine._run_batch, [], []

    def flaky(batch, *args):
        alive_at_retry.append([r() is not None for r in refs])
        if len(batch) > 1:
            activations = torch.zeros(64, 64)  # stands for the failed pass's activations and KV copy
            refs.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(batch, *args)

    engine._run_batch = flaky
    engine.answer_logprobs(prompt, variants, answer)
    assert refs and not any(any(a) for a in alive_at_retry)


def test_out_of_memory_halves_the_batch_then_fails_clearly(tiny, tok, sources):
    from attribot_rag.engine import OutOfMemory

    prompt, variants, answer = _inputs(tok, sources)
    engine = LikelihoodEngine(tiny.model, max_batch_size=8)
    expected = LikelihoodEngine(tiny.model, mode="exact").answer_logprobs(prompt, variants, answer)[1]
    real = engine._forward
    sizes = []

    def flaky(input_ids, cost, cache=None, **kw):  # a fake CUDA OOM for any batch of more than 2 rows
        sizes.append(input_ids.shape[0])
        if input_ids.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(input_ids, cost, cache=cache, **kw)

    engine._forward = flaky
    _, got = engine.answer_logprobs(prompt, variants, answer)
    assert torch.allclose(got, expected, atol=1e-4)
    assert max(sizes) > 2 and sizes.count(2) >= 1  # big batches failed and were split in halves

    calls = []

    def always(input_ids, cost, cache=None, **kw):  # the full-prompt pass fits, no ablation does
        calls.append(1)
        if len(calls) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(input_ids, cost, cache=cache, **kw)

    engine._forward = always
    with pytest.raises(OutOfMemory, match="out of memory scoring one ablation"):
        engine.answer_logprobs(prompt, variants, answer)


def test_models_that_ignore_logits_to_keep_score_the_same(tiny, tok, sources):
    """Remote-code models may accept **kwargs and return logits for every position: only the last are read."""
    prompt, variants, answer = _inputs(tok, sources)
    expected = LikelihoodEngine(tiny.model).answer_logprobs(prompt, variants, answer)

    class IgnoresLogitsToKeep(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.inner, self.config = model, model.config

        def forward(self, input_ids=None, cache=None, use_cache=None, **kwargs):
            kwargs.pop("logits_to_keep", None)
            return self.inner(input_ids=input_ids, cache=cache, use_cache=use_cache, **kwargs)

    got = LikelihoodEngine(IgnoresLogitsToKeep(tiny.model)).answer_logprobs(prompt, variants, answer)
    for e, g in zip(expected, got):
        assert torch.allclose(e, g, atol=1e-4)
