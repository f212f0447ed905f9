"""The public API: ``langchain_attribot.__all__`` is exactly what the package promises (partner-package convention)."""

from __future__ import annotations

import langchain_attribot

EXPECTED_ALL = [
    "EVENT_NAME",
    "SCORE_KEY",
    "SHARE_KEY",
    "AttribotCallbackHandler",
    "AttribotCitations",
    "AttribotDocumentFilter",
    "ChainInputError",
    "ChainPrompt",
    "ChatAttribot",
    "CitationsNotReadyError",
    "CiteOptions",
    "Cited",
    "DocumentIdError",
    "ScorerSettings",
    "clear_cache",
    "create_cited_rag_chain",
    "shared_attributor",
    "shared_model",
]


def test_all_imports() -> None:
    assert sorted(EXPECTED_ALL) == sorted(langchain_attribot.__all__)
    for name in EXPECTED_ALL:
        assert getattr(langchain_attribot, name) is not None
