"""Read retrieved documents from files: JSONL, JSON, or a folder of text files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import DocsFileError
from .spans import Source, as_sources

TEXT_SUFFIXES = (".txt", ".md", ".rst")
EXAMPLE_DOCS = Path(__file__).parent / "data" / "example_docs.jsonl"
EXAMPLE_QUESTION = "Who designed the lighthouse on Skarvøy, and when was it first lit?"


def _source(obj: Any, where: str) -> Source:
    if not isinstance(obj, dict):
        raise DocsFileError(f"{where}: expected a JSON object with 'id' and 'text', got {type(obj).__name__}")
    if not isinstance(obj.get("text"), str) and "sentences" not in obj:
        raise DocsFileError(f"{where}: the object has no 'text' string; add one (other keys become metadata)")
    if "id" not in obj:
        raise DocsFileError(f"{where}: the object has no 'id'; give every document a unique id")
    return as_sources([obj])[0]


def load_docs(path: str | Path) -> list[Source]:
    """Load documents: ``.jsonl`` (one ``{"id", "text", ...}`` object a line), ``.json`` (a list
    of such objects, or ``{"documents": [...]}``), or a folder of ``.txt``/``.md`` files (id =
    relative path). Keys other than ``id``/``text`` are kept as metadata."""
    p = Path(path)
    if not p.exists():
        raise DocsFileError(f"docs file {p} does not exist: pass a .jsonl, .json file or a folder of .txt files")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise DocsFileError(f"folder {p} holds no {'/'.join(TEXT_SUFFIXES)} files")
        docs = []
        for f in files:
            try:
                text = f.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise DocsFileError(f"{f} is not UTF-8 text: {exc}") from exc
            docs.append(Source(id=str(f.relative_to(p)), text=text, metadata={"path": str(f)}))
        return _check(docs, p)
    try:
        raw = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DocsFileError(f"{p} is not UTF-8 text: {exc}") from exc
    if p.suffix.lower() == ".jsonl":
        docs = []
        # split on "\n" only: splitlines() also breaks at U+2028/U+2029/U+0085 inside JSON strings
        for n, line in enumerate(raw.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DocsFileError(f"{p}, line {n}: not valid JSON ({exc.msg}); write one object per line") from exc
            docs.append(_source(obj, f"{p}, line {n}"))
        return _check(docs, p)
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DocsFileError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        if isinstance(data, dict) and "documents" in data:
            data = data["documents"]
        if not isinstance(data, list):
            raise DocsFileError(f"{p}: expected a list of documents or {{\"documents\": [...]}}")
        return _check([_source(obj, f"{p}, document {i}") for i, obj in enumerate(data)], p)
    raise DocsFileError(f"{p}: unsupported file type {p.suffix!r}; use .jsonl, .json, or a folder of .txt files")


def _check(docs: list[Source], p: Path) -> list[Source]:
    if not docs:
        raise DocsFileError(f"{p} holds no documents")
    ids = [d.id for d in docs]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise DocsFileError(f"{p}: duplicate document ids {sorted(dup)}; ids must be unique")
    return docs
