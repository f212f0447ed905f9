"""LangChain integration for attribot-rag: which retrieved documents did the answer use?

* :class:`AttribotCitations`: a Runnable step that adds ranked ``citations`` and the
  ``used_context`` to an LCEL RAG chain's output (and citation annotations to an ``AIMessage``).
* :class:`AttribotCallbackHandler`: the same citations for chains you cannot rewire, from
  their callbacks, by run id.
* :class:`AttribotDocumentFilter`: after generation, keep only the documents the answer used.
* :class:`ChatAttribot`: a local chat model over the embedded models, for offline chains.
* :class:`ChainPrompt` / :func:`create_cited_rag_chain`: score under the chain's own
  ``ChatPromptTemplate`` (the prompt the answer was written under), not a fixed template.

The answer may come from any model, including one behind an API: a local model (by default
attribot-rag's embedded SmolLM2-135M) scores the answer text. This package holds no
attribution logic; it adapts LangChain objects to attribot-rag and back.
"""

from ._convert import SCORE_KEY, SHARE_KEY, Cited, CiteOptions
from ._models import clear_cache, shared_attributor, shared_model
from ._settings import ScorerSettings
from .callbacks import EVENT_NAME, AttribotCallbackHandler
from .chat_models import ChatAttribot
from .citations import AttribotCitations
from .errors import ChainInputError, CitationsNotReadyError, DocumentIdError
from .filters import AttribotDocumentFilter
from .prompts import ChainPrompt, create_cited_rag_chain

__version__ = "0.1.0"

__all__ = [
    "EVENT_NAME", "SCORE_KEY", "SHARE_KEY", "AttribotCallbackHandler", "AttribotCitations", "AttribotDocumentFilter",
    "ChainInputError", "ChainPrompt", "ChatAttribot", "CitationsNotReadyError", "CiteOptions", "Cited",
    "DocumentIdError", "ScorerSettings", "clear_cache", "create_cited_rag_chain", "shared_attributor", "shared_model",
]
