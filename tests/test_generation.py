"""The one greedy decoding loop (attribot_rag.generation): blocking, streamed, and its checks."""

import threading

import pytest
import torch


def _ids(tiny, text="Who built the Eiffel Tower?"):
    return tiny.tokenizer(text)["input_ids"]


def test_generate_is_greedy_and_matches_transformers(tiny):
    from attribot_rag.generation import generate

    ids = _ids(tiny)
    out = generate(tiny, ids, 6)
    ref = tiny.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              max_new_tokens=6, do_sample=False,
                              pad_token_id=tiny.tokenizer.pad_token_id or tiny.tokenizer.eos_token_id)
    assert out.token_ids == ref[0, len(ids):].tolist() and out.prompt_tokens == len(ids)
    assert out.text == tiny.tokenizer.decode(out.token_ids, skip_special_tokens=True).strip()


@pytest.mark.parametrize(("pad", "eos", "want"), [(0, 2, 0), (None, 2, 2), (5, 2, 5), (None, None, None)])
def test_the_pad_token_falls_back_to_eos_only_when_there_is_none(tiny, pad, eos, want):
    """A pad id of 0 is a pad id (not "missing"): only a tokenizer without one pads with its EOS."""
    from types import SimpleNamespace

    from attribot_rag.generation import _generate_kwargs
    from attribot_rag.models import LoadedModel

    loaded = LoadedModel(name="t", model=tiny.model, tokenizer=SimpleNamespace(pad_token_id=pad, eos_token_id=eos))
    assert _generate_kwargs(loaded, [1, 2, 3], 4)["pad_token_id"] == want


def test_stream_yields_what_generate_returns(tiny):
    from attribot_rag.generation import generate, stream

    ids = _ids(tiny)
    with stream(tiny, ids, 6) as pieces:
        text = "".join(pieces)
    assert text.strip() == generate(tiny, ids, 6).text
    assert pieces.token_ids == generate(tiny, ids, 6).token_ids


def test_closing_a_stream_stops_decoding_and_releases_the_lock(tiny):
    from attribot_rag import model_lock
    from attribot_rag.generation import stream

    pieces = stream(tiny, _ids(tiny), 300)
    next(pieces)
    pieces.close()
    assert pieces.token_ids is not None and len(pieces.token_ids) < 300
    got = []

    def other_thread():
        got.append(model_lock(tiny).acquire(timeout=5))
        if got[0]:
            model_lock(tiny).release()

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert got == [True]


def test_an_unread_stream_never_starts(tiny):
    from attribot_rag.generation import stream

    pieces = stream(tiny, _ids(tiny), 4)
    pieces.close()
    assert pieces.token_ids is None


def test_checks_before_any_work(tiny):
    from attribot_rag import ConfigError, ContextTooLongError
    from attribot_rag.generation import generate, stream

    ids = _ids(tiny)
    with pytest.raises(ConfigError, match="max_new_tokens must be an int >= 1"):
        generate(tiny, ids, 0)
    with pytest.raises(ContextTooLongError, match=r"exceed tiny's context window of 10: do less"):
        stream(tiny, ids, 4, context_window=10, advice="do less")
    with pytest.raises(ContextTooLongError, match="context window of 2048"):
        generate(tiny, ids, 2048)


def test_a_failure_in_the_worker_reaches_the_consumer(tiny, monkeypatch):
    from attribot_rag.generation import stream

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(tiny.model, "generate", broken)
    with pytest.raises(RuntimeError, match="boom"):
        list(stream(tiny, _ids(tiny), 4))
