"""Typed errors. Every message says what went wrong *and* what to do about it."""

from __future__ import annotations

import math
import numbers


class AttribotError(Exception):
    """Base class of every error attribot-rag raises on purpose."""


class InputError(AttribotError, ValueError):
    """The caller passed something the library cannot attribute."""


class NoSourcesError(InputError):
    """Attribution was asked for with no retrieved sources."""


class EmptyAnswerError(InputError):
    """The answer to attribute is empty or whitespace only."""


class ContextTooLongError(InputError):
    """The rendered prompt plus answer does not fit the model's context window."""


class ProxyEncodingError(InputError):
    """The proxy model's tokenizer cannot encode the answer text faithfully."""


class DocsFileError(InputError):
    """A documents file (JSONL / JSON / folder) is missing or malformed."""


class ConfigError(InputError):
    """An option or strategy setting is invalid."""


class BatchError(AttribotError):
    """A batch job cannot start or go on: its input, output folder or arguments cannot be used, another
    job owns the folder, or its workers fail (a bad *record* is an error row, not this)."""


class NonFiniteScoreError(AttribotError, ArithmeticError):
    """The model produced NaN or infinite log-probabilities (e.g. fp16 overflow), so no score can be trusted."""


class ModelError(AttribotError):
    """A model could not be found, installed, verified or loaded."""


class UnknownModelError(ModelError, ValueError):
    """The model name is neither a registered short name, a local path nor a Hub id."""


class DeviceError(ConfigError, ModelError):
    """A ``device`` or ``dtype`` setting is unknown, or names a device this machine does not have.

    A :class:`ConfigError` (settings objects refuse it at construction) and a :class:`ModelError`
    (what :func:`~attribot_rag.load_model` has always raised for it)."""


# Predicates behind the ConfigErrors above; each caller words its own message (what to pass instead).
def is_count(value: object, minimum: int = 0) -> bool:
    """An integer (numpy's too, never a bool) of at least ``minimum``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def is_finite_number(value: object) -> bool:
    """A real number (numpy's too, never a bool) that is neither NaN nor infinite."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False
