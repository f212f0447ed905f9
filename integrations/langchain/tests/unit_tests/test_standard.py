"""LangChain's standard unit tests for chat models (``langchain-tests``), run on ``ChatAttribot``.

The chat model runs on attribot-rag's tiny random model, so nothing is downloaded. The standard
tests that do not apply are turned off the suite's way, by its feature flags, not by overriding
them (which its ``test_no_overrides_DO_NOT_OVERRIDE`` refuses):

* ``test_bind_tool_pydantic`` / ``test_with_structured_output`` return early:
  ``has_tool_calling`` and ``has_structured_output`` are ``False`` (no tools, no JSON mode);
* ``test_init_from_env`` skips: a local model reads no environment variables (no API key);
* ``test_serdes`` skips: ``ChatAttribot`` is not serialisable (its ``model`` may be a
  ``LoadedModel`` holding weights).
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

pytest.importorskip("langchain_tests", reason="langchain-tests is in the test extra: pip install -e '.[test]'")

from langchain_tests.unit_tests import ChatModelUnitTests  # noqa: E402

from langchain_attribot import ChatAttribot  # noqa: E402


@functools.cache
def _tiny() -> Any:
    from attribot_rag.testing import tiny_loaded_model

    return tiny_loaded_model()


class TestChatAttribotStandard(ChatModelUnitTests):
    """``ChatModelUnitTests`` with the tiny model; construction never loads weights."""

    @property
    def chat_model_class(self) -> type[ChatAttribot]:
        return ChatAttribot

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": _tiny()}

    # Feature flags, not overrides: the suite forbids overriding its tests (test_no_overrides_DO_NOT_OVERRIDE)
    # except as xfail. With these, the tool-calling and structured-output tests return early.
    @property
    def has_tool_calling(self) -> bool:
        """No: ChatAttribot is a greedy local generator for offline chains; it binds no tools."""
        return False

    @property
    def has_structured_output(self) -> bool:
        """No: without tool calling or a JSON mode there is no structured output."""
        return False
