"""attribot-rag: which retrieved sources did a RAG answer actually use?

Leave-one-out context attribution made cheap (AttriBoT: KV-cache reuse, batched ablations,
hierarchical attribution, proxy models, proxy pruning), with ranked citations.
"""

from .attributor import PRESETS, Attributor, Encoded, Strategy
from .config import AttributorConfig, clear_shared_attributors, shared_attributor
from .engine import Cost, LikelihoodEngine, OutOfMemory
from .errors import (
    AttribotError,
    BatchError,
    ConfigError,
    ContextTooLongError,
    DeviceError,
    DocsFileError,
    EmptyAnswerError,
    InputError,
    ModelError,
    NonFiniteScoreError,
    NoSourcesError,
    ProxyEncodingError,
    UnknownModelError,
)
from .models import DEFAULT_MODEL, REGISTRY, LoadedModel, clear_model_cache, load_model, model_lock, shared_model
from .prompt import PromptBuilder, PromptTemplate
from .result import AttributionResult, Citation, SourceRow, SpanScore
from .spans import Sentence, Source, split_source, split_text

__version__ = "0.2.0"

__all__ = [
    "AttribotError", "AttributionResult", "Attributor", "AttributorConfig", "BatchError", "Citation", "ConfigError",
    "ContextTooLongError", "Cost", "DEFAULT_MODEL", "DeviceError", "DocsFileError", "EmptyAnswerError", "Encoded",
    "InputError", "LikelihoodEngine", "LoadedModel", "ModelError", "NoSourcesError", "NonFiniteScoreError",
    "OutOfMemory", "PRESETS", "PromptBuilder", "PromptTemplate", "ProxyEncodingError", "REGISTRY", "Sentence",
    "Source", "SourceRow", "SpanScore", "Strategy", "UnknownModelError", "clear_model_cache",
    "clear_shared_attributors", "load_model", "model_lock", "shared_attributor", "shared_model", "split_source",
    "split_text",
]
