"""Test helpers: a tiny, randomly initialised causal LM and a byte-level tokenizer, built offline.

For mechanics tests (here and in the integration packages) that must not download weights:

    >>> from attribot_rag.testing import tiny_loaded_model
    >>> attributor = Attributor(tiny_loaded_model())
"""

from __future__ import annotations

import functools

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France.",
    "Answer the question using the documents below. Question: Document [1] Title",
    "Berlin is in Germany. The Eiffel Tower was built in 1889 by Gustave Eiffel.",
]


@functools.cache
def tiny_tokenizer(chat: bool = True):
    """A byte-level BPE tokenizer trained on a few sentences (ChatML template unless ``chat=False``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 5, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_model(vocab_size: int = 400, seed: int = 0, layers: int = 2, sliding_window: int | None = None):
    """A 2-layer Llama (or sliding-window Qwen2) with random weights, fp32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    )
    if sliding_window:
        cfg = Qwen2Config(
            **common,
            use_sliding_window=True,
            sliding_window=sliding_window,
            max_window_layers=0,
            layer_types=["sliding_attention"] * layers,
        )
        model = Qwen2ForCausalLM(cfg)
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    return model.eval().float()


def tiny_loaded_model(seed: int = 0, name: str = "tiny"):
    """A :class:`~attribot_rag.models.LoadedModel` of :func:`tiny_model` + :func:`tiny_tokenizer`."""
    from .models import LoadedModel

    tok = tiny_tokenizer()
    return LoadedModel(name=name, model=tiny_model(len(tok), seed=seed), tokenizer=tok)


async def with_ticker(work, interval: float = 0.0):
    """Await ``work`` (a coroutine function of no arguments) while a task counts event-loop turns.

    Returns ``(ticks, result)``: a call that blocks the loop lets the ticker run only around it,
    one that runs its work off the loop lets it tick throughout.
    """
    import asyncio

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(interval)

    task = asyncio.create_task(ticker())
    try:
        result = await work()
    finally:
        task.cancel()
    return ticks, result
