"""Errors raised when a chain hands the integration something it cannot cite.

They subclass attribot-rag's :class:`~attribot_rag.InputError` (itself a ``ValueError``), so one
``except InputError`` catches these and the core's own input errors (``NoSourcesError``,
``EmptyAnswerError``, ...), which the integration raises unchanged.
"""

from __future__ import annotations

from attribot_rag import InputError


class ChainInputError(InputError):
    """The chain's output lacks a question, the documents or the answer, or holds the wrong type."""


class DocumentIdError(InputError):
    """A retrieved ``Document`` has no id (or two documents share one), so citations cannot name it."""


class CitationsNotReadyError(InputError, KeyError):
    """The callback handler holds no citations for that run (not finished, or not a top-level run)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
