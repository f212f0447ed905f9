"""Greedy generation with a :class:`~attribot_rag.LoadedModel`: the one decoding loop of the code base.

:meth:`Attributor.generate <attribot_rag.Attributor.generate>` (an answer to attribute), LangChain's
``ChatAttribot`` and LlamaIndex's ``AttribotLLM`` all decode through :func:`generate` or
:func:`stream`, so they agree on the settings (greedy, no sampling, an all-ones attention mask, the
tokenizer's pad token or else its end-of-sequence token), on the context-window check and on
locking: each call holds the model's process-wide lock (:func:`~attribot_rag.models.model_lock`)
while it decodes, so generation and attribution on one shared model take turns.

Prompt rendering is the caller's: these functions take the prompt's token ids.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, ContextTooLongError, is_count
from .models import LoadedModel, model_lock


@dataclass(frozen=True)
class Generation:
    """One greedy generation: ``text`` (the new tokens decoded, special tokens skipped, stripped),
    ``token_ids`` (the new tokens) and ``prompt_tokens`` (how many tokens the prompt had)."""

    text: str
    token_ids: list[int]
    prompt_tokens: int


def check_fits(loaded: LoadedModel, prompt_tokens: int, max_new_tokens: int, *, context_window: int | None = None,
               advice: str = "pass a shorter prompt (fewer or shorter sources)") -> None:
    """Refuse a prompt that leaves no room for ``max_new_tokens`` in the context window.

    ``context_window``: the window to check against (default: the model's own, when it states one).
    ``advice`` ends the message: what the caller's user can do.

    Raises:
        ConfigError: ``max_new_tokens`` is not an int >= 1.
        ContextTooLongError: ``prompt_tokens + max_new_tokens`` exceed the window.
    """
    if not is_count(max_new_tokens, 1):
        raise ConfigError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    window = context_window if context_window is not None else loaded.context_window
    if window is not None and prompt_tokens + max_new_tokens > window:
        raise ContextTooLongError(
            f"prompt ({prompt_tokens} tokens) + {max_new_tokens} new tokens exceed {loaded.name}'s context "
            f"window of {window}: {advice}"
        )


def _generate_kwargs(loaded: LoadedModel, prompt_ids: Sequence[int], max_new_tokens: int) -> dict[str, Any]:
    import torch

    input_ids = torch.tensor([list(prompt_ids)], device=loaded.device)
    tok = loaded.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id  # id 0 is a real pad token
    return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                do_sample=False, pad_token_id=pad)


def generate(loaded: LoadedModel, prompt_ids: Sequence[int], max_new_tokens: int = 128, *,
             context_window: int | None = None,
             advice: str = "pass a shorter prompt (fewer or shorter sources)") -> Generation:
    """Greedy decoding of at most ``max_new_tokens`` after ``prompt_ids`` (blocking).

    The prompt is checked against the context window first (:func:`check_fits`, with
    ``context_window`` and ``advice``); the model's lock is held while it decodes.

    Raises:
        ConfigError, ContextTooLongError: see :func:`check_fits`.
    """
    import torch

    check_fits(loaded, len(prompt_ids), max_new_tokens, context_window=context_window, advice=advice)
    kwargs = _generate_kwargs(loaded, prompt_ids, max_new_tokens)
    with model_lock(loaded), torch.inference_mode():
        out = loaded.model.generate(**kwargs)
    new = out[0, len(prompt_ids):].tolist()
    text = loaded.tokenizer.decode(new, skip_special_tokens=True).strip()
    return Generation(text=text, token_ids=new, prompt_tokens=len(prompt_ids))


class GenerationStream(Iterator[str]):
    """Text pieces of one greedy generation, as they are decoded (see :func:`stream`).

    Decoding runs in a worker thread that starts at the first ``next``; an error there is raised
    to the consumer at the end of the stream. :meth:`close` (also on leaving a ``with`` block, or
    when an iterating generator is closed) stops the decoding at the next token and waits for the
    thread. Once the stream has ended or been closed, ``token_ids`` holds the new tokens.
    The pieces are the tokenizer's decoding as it goes; nothing is stripped.
    """

    def __init__(self, loaded: LoadedModel, prompt_ids: Sequence[int], max_new_tokens: int) -> None:
        self.loaded = loaded
        self.prompt_tokens = len(prompt_ids)
        self.token_ids: list[int] | None = None
        self._kwargs = _generate_kwargs(loaded, prompt_ids, max_new_tokens)
        self._pieces = self._run()

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        """Stop decoding (if it runs) and wait for the worker thread; never raises its error."""
        self._pieces.close()

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        loaded = self.loaded
        halt = threading.Event()  # set when the consumer stops early: decoding stops too

        class _Halt(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> bool:
                return halt.is_set()

        streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def work() -> None:
            try:
                with model_lock(loaded), torch.inference_mode():
                    out = loaded.model.generate(**self._kwargs, streamer=streamer,
                                                stopping_criteria=StoppingCriteriaList([_Halt()]))
                self.token_ids = out[0, self.prompt_tokens:].tolist()
            except BaseException as exc:  # noqa: BLE001 - raised in the consuming thread
                failure.append(exc)
                streamer.end()

        thread = threading.Thread(target=work, name="attribot-generate", daemon=True)
        thread.start()
        try:
            yield from streamer
        finally:  # also when the consumer closes the stream after a few pieces
            halt.set()
            thread.join()
        if failure:
            raise failure[0]


def stream(loaded: LoadedModel, prompt_ids: Sequence[int], max_new_tokens: int = 128, *,
           context_window: int | None = None,
           advice: str = "pass a shorter prompt (fewer or shorter sources)") -> GenerationStream:
    """:func:`generate`, streamed: an iterator of text pieces (a :class:`GenerationStream`).

    The prompt is checked here, before anything runs (:func:`check_fits`); decoding starts at the
    first ``next``, in a worker thread that holds the model's lock.

    Example:
        >>> with stream(loaded, ids, 64) as pieces:
        ...     for piece in pieces:
        ...         print(piece, end="")
    """
    check_fits(loaded, len(prompt_ids), max_new_tokens, context_window=context_window, advice=advice)
    return GenerationStream(loaded, prompt_ids, max_new_tokens)
