"""Read retrieved documents from files: JSONL, JSON, or a folder of text files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from .errors import DocsFileError, InputError
from .spans import Source, as_sources, check_some_text

TEXT_SUFFIXES = (".txt", ".md", ".rst")
EXAMPLE_DOCS = Path(__file__).parent / "data" / "example_docs.jsonl"
EXAMPLE_QUESTION = "Who designed the lighthouse on Skarvøy, and when was it first lit?"


def _source(obj: Any, where: str) -> Source:
    if not isinstance(obj, dict):
        raise DocsFileError(f"{where}: expected a JSON object with 'id' and 'text', got {type(obj).__name__}")
    if not isinstance(obj.get("text"), str) and "sentences" not in obj:
        raise DocsFileError(f"{where}: the object has no 'text' string; add one (other keys become metadata)")
    if obj.get("id") is None:
        raise DocsFileError(f"{where}: the object has no 'id'; give every document a unique id")
    try:
        return as_sources([obj], allow_empty_text=True)[0]  # the whole file must hold some text: _check
    except InputError as exc:  # e.g. bad 'metadata' or 'sentences': say which file and line
        raise DocsFileError(f"{where}: {str(exc).removeprefix('source 0: ')}") from exc


def _read(f: Path) -> str:
    # utf-8-sig: files saved by Notepad or Excel start with a byte-order mark, which is not text
    try:
        return f.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocsFileError(f"{f} is not UTF-8 text: {exc}") from exc
    except OSError as exc:
        raise DocsFileError(f"cannot read {f}: {exc.strerror or exc}") from exc


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise DocsFileError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    except (RecursionError, ValueError) as exc:  # nesting too deep; NaN/Infinity (not JSON)
        raise DocsFileError(f"{where}: not valid JSON ({exc})") from exc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value; write null or a number")


def load_docs(path: str | Path) -> list[Source]:
    """Load documents: ``.jsonl`` (one ``{"id", "text", ...}`` object a line), ``.json`` (a list
    of such objects, or ``{"documents": [...]}``), or a folder of ``.txt``/``.md`` files (id =
    relative path; hidden files and folders are skipped). Keys other than ``id``/``text`` are kept
    as metadata. A UTF-8 byte-order mark is ignored."""
    if isinstance(path, str) and not path.strip():  # Path("") is the current folder
        raise DocsFileError("the docs path is empty: pass a .jsonl, .json file or a folder of .txt files")
    p = Path(path)
    if not p.exists():
        raise DocsFileError(f"docs file {p} does not exist: pass a .jsonl, .json file or a folder of .txt files")
    if p.is_dir():
        files = sorted(
            f for f in p.rglob("*")
            if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES
            # hidden: .git, .ipynb_checkpoints copies would be loaded as duplicate documents
            and not any(part.startswith(".") for part in f.relative_to(p).parts)
        )
        if not files:
            raise DocsFileError(f"folder {p} holds no {'/'.join(TEXT_SUFFIXES)} files")
        docs = [Source(id=str(f.relative_to(p)), text=_read(f), metadata={"path": str(f)}) for f in files]
        return _check(docs, p)
    raw = _read(p)
    if p.suffix.lower() == ".jsonl":
        docs = []
        # split on "\n" only: splitlines() also breaks at U+2028/U+2029/U+0085 inside JSON strings
        for n, line in enumerate(raw.split("\n"), start=1):
            if not line.strip():
                continue
            obj = _parse_json(line, f"{p}, line {n}")
            docs.append(_source(obj, f"{p}, line {n}"))
        return _check(docs, p)
    if p.suffix.lower() == ".json":
        data = _parse_json(raw, str(p))
        if isinstance(data, dict) and "documents" in data:
            data = data["documents"]
        if not isinstance(data, list):
            raise DocsFileError(f"{p}: expected a list of documents or {{\"documents\": [...]}}")
        return _check([_source(obj, f"{p}, document {i}") for i, obj in enumerate(data)], p)
    raise DocsFileError(f"{p}: unsupported file type {p.suffix!r}; use .jsonl, .json, or a folder of .txt files")


def _check(docs: list[Source], p: Path) -> list[Source]:
    if not docs:
        raise DocsFileError(f"{p} holds no documents")
    dup = {i for i, n in Counter(d.id for d in docs).items() if n > 1}
    if dup:
        raise DocsFileError(f"{p}: duplicate document ids {sorted(dup)}; ids must be unique")
    try:
        check_some_text(docs)
    except InputError as exc:
        raise DocsFileError(f"{p}: {exc}") from exc
    return docs
