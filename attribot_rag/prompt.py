"""Render question + sources into token ids, with and without an ablated span.

The prompt is one user turn (the model's chat template, or a plain template for base models),
or a whole chat of messages with the documents in one of them (``PromptTemplate(messages=...)``,
e.g. a framework's chat prompt); the answer is the assistant turn. Prompt and answer are
tokenized separately and concatenated, so the answer's token ids are identical under every
ablation and log-probs line up position for position. An ablation re-renders the prompt without
the span's *text* (LOO's definition), never a masked token.

:meth:`PromptBuilder.encode_layout` also says where each span's tokens sit in the full prompt
(for masked LOO, which hides a span from attention instead of re-rendering the prompt).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from .errors import ConfigError, EmptyAnswerError, InputError, ProxyEncodingError
from .spans import Source

_SENTINEL = "\x00ATTRIBOT_USER_CONTENT\x00"

# (source index, sentence index) removes one sentence; (source index, None) the whole source.
Ablation = tuple[int, int | None]
# Earlier conversation turns, oldest first: ((role, content), ...) with role "user" or "assistant".
History = tuple[tuple[str, str], ...]
_ROLES = ("user", "assistant")
_MESSAGE_ROLES = ("system", "user", "assistant")


def as_history(history) -> History:
    """Validate chat history: a sequence of ``{"role", "content"}`` dicts or ``(role, content)`` pairs.

    Roles are ``"user"`` and ``"assistant"``; the history precedes the turn that holds the
    sources, and is never ablated (it is context, not a citable source).
    """
    if history is None:
        return ()
    if isinstance(history, (str, bytes, dict)):
        raise InputError("history must be a list of messages ({'role': 'user'|'assistant', 'content': str})")
    out = []
    for i, msg in enumerate(history):
        if isinstance(msg, dict):
            role, content = msg.get("role"), msg.get("content")
        elif isinstance(msg, (tuple, list)) and len(msg) == 2:
            role, content = msg
        else:
            # chat message objects by duck typing: LlamaIndex's have .role, LangChain's .type ("human"/"ai")
            role = getattr(msg, "role", None) or getattr(msg, "type", None)
            content = getattr(msg, "content", None)
            role = getattr(role, "value", role)
            if not isinstance(content, str):  # LangChain content blocks: .text joins their text
                text = getattr(msg, "text", None)
                content = str(text) if isinstance(text, str) else text() if callable(text) else text
        role = {"human": "user", "ai": "assistant"}.get(role, role)
        if role not in _ROLES:
            raise InputError(f"history[{i}] has role {role!r}: use 'user' or 'assistant' (put system text "
                             "in PromptTemplate(system=...))")
        if not isinstance(content, str):
            raise InputError(f"history[{i}] has no text content: pass {{'role': ..., 'content': str}}")
        out.append((role, content))
    return tuple(out)


@dataclass(frozen=True)
class PromptTemplate:
    """How a question and its sources become the user turn.

    ``document`` is formatted per kept source with ``index`` (1-based position, stable under
    ablation so other sources keep their labels), ``title`` (" Title" or "") and ``text`` (the
    source's :attr:`~attribot_rag.spans.Source.prefix`, never cited, then its stripped text).
    ``chat`` chooses the tokenizer's chat template: ``None`` = use it when the tokenizer has
    one, else the ``plain`` template (for base models).

    ``messages`` renders a whole chat instead of ``system`` + history + the ``user`` turn (for a
    pipeline whose prompt puts the documents in, say, the system message): ``(role, text)`` pairs
    with roles ``"system"``, ``"user"``, ``"assistant"``, and at most one ``("history", "")`` that
    marks where the earlier turns go (without it they go after the leading system messages).
    Each text is formatted like ``user`` (``{documents}``, ``{question}``, ``{instruction}``;
    literal braces doubled); exactly one holds ``{documents}``, once, and that message plays the
    ``user`` turn's part: its documents are the ones ablated. Every message's text is content
    (encoded as plain text, like the documents); only the chat template's own markup is not.
    With the plain template the messages are rendered with ``plain_turn`` in place of ``{user}``.
    """

    # Documents first, then the instruction and question: small models given the instruction
    # first tended to copy the documents ("Document [1] ...") instead of answering.
    instruction: str = "Using the documents above, answer the question in one short sentence."
    document: str = "Document [{index}]{title}\n{text}"
    user: str = "{documents}\n\n{instruction}\n\nQuestion: {question}"
    plain: str = "{user}\n\nAnswer:"
    plain_answer_prefix: str = " "
    plain_turn: str = "{role}: {content}\n\n"  # a history message in the plain template
    system: str | None = None
    chat: bool | None = None
    messages: tuple[tuple[str, str], ...] | None = None
    _slot: int | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.messages is None:
            return
        msgs = _check_messages(self.messages)
        if self.system is not None:
            raise ConfigError("PromptTemplate(messages=..., system=...): put the system text in a "
                              "('system', text) message instead")
        slots = []
        for i, (role, text) in enumerate(msgs):
            if role == "history":
                continue
            try:
                rendered = text.format(documents=_FIELD, question="", instruction="")
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(f"PromptTemplate messages[{i}] {text[:60]!r} does not format with "
                                  f"{{documents}}, {{question}} and {{instruction}} ({exc!r}): double literal "
                                  "braces ({{ }})") from exc
            slots += [i] * rendered.count(_FIELD)
        if len(slots) != 1:
            raise ConfigError(f"PromptTemplate messages hold {{documents}} {len(slots)} times: put it in exactly "
                              "one message, once (the documents' place, where sources are ablated)")
        object.__setattr__(self, "messages", msgs)
        object.__setattr__(self, "_slot", slots[0])

    @property
    def documents_turn(self) -> str:
        """The template of the turn that holds the documents: ``user``, or the ``messages`` text holding
        ``{documents}``."""
        return self.user if self._slot is None else self.messages[self._slot][1]

    def user_turn(self, question: str, sources: Sequence[Source], texts: Sequence[str | None]) -> str:
        """The user message; ``texts[i] is None`` leaves source ``i`` out entirely."""
        docs = []
        for i, (src, text) in enumerate(zip(sources, texts)):
            if text is None:
                continue
            title = f" {src.title}" if src.title else ""
            docs.append(self.document.format(index=i + 1, title=title, text=src.rendered(text)))
        return self.documents_turn.format(instruction=self.instruction, documents="\n\n".join(docs),
                                          question=question)

    def user_layout(self, question: str, sources: Sequence[Source]) -> tuple[str, dict[int, tuple[int, int, int]]]:
        """:meth:`user_turn` with every source kept, and where each source landed in it.

        Returns ``(text, where)``: ``where[i] = (block_start, block_end, text_start)``, character
        offsets into ``text`` of source ``i``'s whole rendered block (header, prefix and text) and
        of its stripped text (after its ``prefix``). Raises :class:`ConfigError` when the templates
        do not hold ``{documents}`` and each document's ``{text}`` exactly once (the spans cannot be
        located then).
        """
        docs, where, pos = [], {}, 0
        for i, src in enumerate(sources):
            title = f" {src.title}" if src.title else ""
            block = self.document.format(index=i + 1, title=title, text=src.rendered())
            head = _offset_of(self.document, "text", index=i + 1, title=title) + len(src.prefix)
            if docs:
                pos += 2  # the "\n\n" that joins document blocks
            where[i] = (pos, pos + len(block), pos + head)
            docs.append(block)
            pos += len(block)
        turn = self.documents_turn
        text = turn.format(instruction=self.instruction, documents="\n\n".join(docs), question=question)
        shift = _offset_of(turn, "documents", instruction=self.instruction, question=question)
        if text != self.user_turn(question, sources, [s.text for s in sources]):  # pragma: no cover - a guard
            raise ConfigError("the prompt template renders documents in a way the span layout cannot follow")
        return text, {i: (a + shift, b + shift, t + shift) for i, (a, b, t) in where.items()}


_FIELD = "\x00ATTRIBOT_FIELD\x00"


def _check_messages(messages) -> tuple[tuple[str, str], ...]:
    """``PromptTemplate.messages`` as a tuple of ``(role, text)`` pairs (hashable), roles checked."""
    if isinstance(messages, (str, bytes, dict)):
        raise ConfigError("PromptTemplate(messages=...) takes (role, text) pairs, e.g. "
                          "[('system', 'Use these documents:\\n\\n{documents}'), ('user', '{question}')]")
    out = []
    for i, msg in enumerate(messages):
        if not (isinstance(msg, (tuple, list)) and len(msg) == 2 and all(isinstance(x, str) for x in msg)):
            raise ConfigError(f"PromptTemplate messages[{i}] is {msg!r}: pass a (role, text) pair of str")
        role, text = msg
        if role not in (*_MESSAGE_ROLES, "history"):
            raise ConfigError(f"PromptTemplate messages[{i}] has role {role!r}: use 'system', 'user', "
                              "'assistant', or ('history', '') for where the earlier turns go")
        if role == "history" and text:
            raise ConfigError(f"PromptTemplate messages[{i}]: the history marker is ('history', ''), with no text")
        out.append((role, text))
    if sum(r == "history" for r, _ in out) > 1:
        raise ConfigError("PromptTemplate messages hold more than one ('history', '') marker")
    return tuple(out)


def _offset_of(template: str, name: str, **values) -> int:
    """Where ``{name}`` lands in ``template.format(**values, name=...)`` (it must occur exactly once)."""
    text = template.format(**values, **{name: _FIELD})
    if text.count(_FIELD) != 1:
        raise ConfigError(f"the template {template!r} must hold {{{name}}} exactly once to locate spans in the "
                          "prompt (masked LOO needs that): use a template that does, or another strategy")
    return text.index(_FIELD)


@dataclass(frozen=True)
class PromptLayout:
    """The full prompt's token ids and the token range of every span in them.

    ``ranges[(d, None)]`` is source ``d``'s whole block (its "Document [n] Title" header and
    text); ``ranges[(d, k)]`` is sentence ``k``'s segment (the sentence and the whitespace after
    it). Each is ``(start, end)``, a half-open range into ``ids``; empty (``start == end``) when a
    span got no token of its own (see :meth:`PromptBuilder.encode_layout`).
    """

    ids: list[int]
    ranges: dict[Ablation, tuple[int, int]]


@dataclass(frozen=True)
class EncodedAnswer:
    """Answer token ids plus each token's ``[start, end)`` character span in the answer text."""

    ids: list[int]
    offsets: list[tuple[int, int]]


class PromptBuilder:
    """Turns (question, sources, ablation) into token ids for one tokenizer."""

    def __init__(self, tokenizer, template: PromptTemplate | None = None) -> None:
        self.tokenizer = tokenizer
        self.template = template or PromptTemplate()
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        if self.template.chat and not has_chat:
            raise ConfigError(
                "template.chat=True but this tokenizer has no chat template: "
                "set chat=None/False to use the plain template, or give the tokenizer one"
            )
        self.use_chat = has_chat if self.template.chat is None else self.template.chat
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        markers = sorted({str(getattr(t, "content", t)) for t in added.values()} | set(
            getattr(tokenizer, "all_special_tokens", []) or []), key=len, reverse=True)
        markers = [m for m in markers if len(m) > 1]
        self._markers = re.compile("|".join(map(re.escape, markers))) if markers else None
        # The frame depends only on the history (and, with ``template.messages``, the question): render
        # the chat template once per history, not once per ablated prompt (a dict write is atomic, so
        # concurrent callers are safe).
        self._frames: dict[tuple, tuple[list[tuple[str, bool]], list[tuple[str, bool]]]] = {}

    def _user(self, question: str, sources: Sequence[Source], ablation: Ablation | None,
              keep: Collection[int] | None = None) -> str:
        texts: list[str | None] = [s.text if keep is None or i in keep else None for i, s in enumerate(sources)]
        if ablation is not None:
            doc, sent = ablation
            texts[doc] = None if sent is None else sources[doc].without(sources[doc].sentences[sent])
        return self.template.user_turn(question, sources, texts)

    def _frame(self, history: History = (), question: str = "") -> tuple[list[tuple[str, bool]],
                                                                          list[tuple[str, bool]]]:
        key = (history, question if self.template.messages is not None else None)
        frame = self._frames.get(key)
        if frame is None:
            if len(self._frames) > 64:  # conversations grow: keep the cache bounded
                self._frames.clear()
            frame = self._frames[key] = self._render_frame(history, question)
        return frame

    def _turns(self, history: History, question: str) -> list[tuple[str, str | None, bool]]:
        """The messages around the documents' turn: ``(role, content, is_content)``; content ``None``
        is the documents' turn itself (rendered per ablation, not part of the frame)."""
        t = self.template
        hist = [(r, c, True) for r, c in history]
        if t.messages is None:
            system = [] if t.system is None else [("system", t.system, False)]  # legacy: markup, not content
            return [*system, *hist, ("user", None, True)]
        at = next((i for i, (r, _) in enumerate(t.messages) if r == "history"), None)
        if at is None and hist:  # no marker: after the leading system messages
            at = next((i for i, (r, _) in enumerate(t.messages) if r != "system"), len(t.messages))
        out: list[tuple[str, str | None, bool]] = []
        for i, (role, text) in enumerate(t.messages):
            if i == at:
                out += hist
            if role == "history":
                continue
            if i == t._slot:
                out.append((role, None, True))
            else:
                out.append((role, text.format(question=question, instruction=t.instruction), True))
        if at == len(t.messages):
            out += hist
        return out

    def _render_frame(self, history: History, question: str = "") -> tuple[list[tuple[str, bool]],
                                                                             list[tuple[str, bool]]]:
        """The text before and after the documents' turn (chat template or plain), as ``(text, is_content)``
        pieces: messages' text is content (encoded as plain text like the documents), the template's
        own text is not.
        """
        turns = self._turns(history, question)
        marks = [_SENTINEL if c is None else f"\x00ATTRIBOT_MESSAGE_{i}\x00" for i, (_, c, _) in enumerate(turns)]
        legacy = self.template.messages is None
        if not self.use_chat:
            before, _, after = self.template.plain.partition("{user}")
            if legacy:
                chat = "".join(self.template.plain_turn.format(role=r.capitalize(), content=c) for r, c in history)
                return [(chat, True), (before, False)], [(after, False)]
            body = "".join(self.template.plain_turn.format(role=r.capitalize(), content=m)
                           for (r, _, _), m in zip(turns, marks))
            text = before + body.rstrip() + after  # the last turn's separator gives way to the template's
        else:
            messages = [{"role": r, "content": m if is_content else c} for (r, c, is_content), m in zip(turns, marks)]
            try:
                text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception as exc:  # a template's raise_exception (e.g. "roles must alternate") is a TemplateError
                roles = "/".join(m["role"] for m in messages)
                raise ConfigError(
                    f"the model's chat template rejected the messages ({roles}): {exc}. Pass a history that "
                    "alternates user/assistant and ends with an assistant turn, or a PromptTemplate with chat=False"
                ) from exc
        if _SENTINEL not in text:
            raise ConfigError("the chat template dropped the user message; pass a PromptTemplate with chat=False")
        before_pieces: list[tuple[str, bool]] = []
        after_pieces: list[tuple[str, bool]] = []
        pieces, rest = before_pieces, text
        for mark, (_, content, is_content) in zip(marks, turns):
            if not is_content:
                continue
            head, found, rest = rest.partition(mark)
            if not found:
                raise ConfigError("the chat template dropped a message; pass a PromptTemplate with chat=False")
            pieces.append((head, False))
            if content is None:
                pieces = after_pieces
            else:
                pieces.append((content, True))
        pieces.append((rest, False))
        return before_pieces, after_pieces

    def prompt_text(self, question: str, sources: Sequence[Source], ablation: Ablation | None = None,
                    history: History = ()) -> str:
        """The full prompt text (up to where the answer starts) with ``ablation`` applied."""
        before, after = self._frame(history, question)
        return "".join(t for t, _ in before) + self._user(question, sources, ablation) + "".join(t for t, _ in after)

    def encode_prompt(self, question: str, sources: Sequence[Source], ablation: Ablation | None = None,
                      history: History = (), keep: Collection[int] | None = None) -> list[int]:
        """Token ids of :meth:`prompt_text`; ``keep`` (source indices) leaves every other source out,
        so ``keep=()`` is the prompt with no documents at all (the context-support passes).

        The template's frame is tokenized with its special tokens; the user content (documents,
        question) with special-token strings split into plain text, so a document that contains
        ``<|im_end|>`` cannot close the turn or inject a role.
        """
        before, after = self._frame(history, question)
        # Chat templates write their own BOS; the plain template gets the tokenizer's (if any).
        ids = [] if self.use_chat else list(self.tokenizer("", add_special_tokens=True)["input_ids"])
        ids += self._encode_pieces(before)
        ids += self._encode_plain(self._user(question, sources, ablation, keep))
        ids += self._encode_pieces(after)
        return ids

    def _encode_pieces(self, pieces: Sequence[tuple[str, bool]]) -> list[int]:
        """Frame pieces' ids: content as plain text, the template's own text with its special tokens."""
        ids: list[int] = []
        for text, is_content in pieces:
            if text:
                ids += self._encode_plain(text) if is_content else self.tokenizer(
                    text, add_special_tokens=False)["input_ids"]
        return ids

    def encode_layout(self, question: str, sources: Sequence[Source], history: History = ()) -> PromptLayout:
        """The full prompt's ids (exactly :meth:`encode_prompt`'s) and each span's token range.

        Tokenizers merge characters across span boundaries (byte-level BPE glues the space
        between two sentences to the next word: ``" Berlin"``). Each token is therefore given to
        the span holding its first non-whitespace character (a whitespace-only token: its first
        character), the rule that also assigns answer tokens to answer sentences; a span's range
        is the tokens so given to it, which are contiguous. A token whose visible text starts in
        one span and runs into the next belongs to the first only.
        """
        before, after = self._frame(history, question)
        tok = self.tokenizer
        ids = [] if self.use_chat else list(tok("", add_special_tokens=True)["input_ids"])
        ids += self._encode_pieces(before)
        user, where = self.template.user_layout(question, sources)
        if user != self._user(question, sources, None):  # pragma: no cover - a guard
            raise ConfigError("the span layout does not match the rendered prompt")
        first = len(ids)
        user_ids, anchors = [], []
        for start, piece in self._plain_pieces(user):
            enc = tok(piece, add_special_tokens=False, return_offsets_mapping=True)
            user_ids += enc["input_ids"]
            anchors += [_first_visible(user, a + start, b + start) for a, b in enc["offset_mapping"]]
        ids += user_ids
        ids += self._encode_pieces(after)

        def token_range(a: int, b: int) -> tuple[int, int]:
            inside = [i for i, x in enumerate(anchors) if a <= x < b]
            if not inside:
                return (first, first)
            return (first + inside[0], first + inside[-1] + 1)

        ranges: dict[Ablation, tuple[int, int]] = {}
        for d, src in enumerate(sources):
            block_start, block_end, text_start = where[d]
            ranges[(d, None)] = token_range(block_start, block_end)
            lead = len(src.text) - len(src.text.lstrip())
            text_end = text_start + len(src.text.strip())
            for k, sent in enumerate(src.sentences):
                a = min(max(text_start + sent.seg_start - lead, text_start), text_end)
                b = min(max(text_start + sent.seg_end - lead, text_start), text_end)
                ranges[(d, k)] = token_range(a, b)
        return PromptLayout(ids=ids, ranges=ranges)

    def _plain_pieces(self, text: str) -> list[tuple[int, str]]:
        """``text`` cut so that no piece holds a whole added/special-token string, with start offsets.

        Such a string is cut into its first character and the rest, so the tokenizer cannot match it.
        (transformers' ``split_special_tokens`` would do this by flipping a flag on the shared
        Rust tokenizer: a race under concurrent calls.)
        """
        if self._markers is None:
            return [(0, text)]
        cuts = {0, len(text)}
        for m in self._markers.finditer(text):
            cuts |= {m.start(), m.start() + 1, m.end()}
        cuts = sorted(cuts)
        return [(a, text[a:b]) for a, b in zip(cuts, cuts[1:]) if b > a]

    def _encode_plain(self, text: str) -> list[int]:
        """Token ids of ``text`` with any added/special-token string kept as plain text."""
        tok = self.tokenizer
        return [i for _, piece in self._plain_pieces(text) for i in tok(piece, add_special_tokens=False)["input_ids"]]

    @property
    def answer_prefix(self) -> str:
        """Text glued before the answer (a space after the plain template's "Answer:")."""
        return "" if self.use_chat else self.template.plain_answer_prefix

    def encode_answer(self, answer: str, *, strict: bool = False) -> EncodedAnswer:
        """Answer ids and character offsets (into ``answer``).

        ``strict`` checks that the tokens decode back to the answer exactly; a proxy whose
        tokenizer cannot do that (unknown tokens, lossy normalisation) would score a
        different text, so it raises :class:`ProxyEncodingError`.
        """
        if not answer or not answer.strip():
            raise EmptyAnswerError("the answer is empty: pass the generated answer text, or None to generate one")
        prefix = self.answer_prefix
        # Like documents, an answer that quotes "<|im_end|>" is scored as that text, not as the token.
        ids, spans = [], []
        for start, piece in self._plain_pieces(prefix + answer):
            enc = self.tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
            ids += enc["input_ids"]
            spans += [(a + start, b + start) for a, b in enc["offset_mapping"]]
        if not ids:
            raise ProxyEncodingError("the tokenizer produced no tokens for the answer")
        if strict:
            unk = getattr(self.tokenizer, "unk_token_id", None)
            decoded = self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)
            if (unk is not None and unk in ids) or decoded != prefix + answer:
                raise ProxyEncodingError(
                    "the proxy's tokenizer cannot encode the answer text faithfully "
                    f"(it round-trips to {decoded[:80]!r}); pick a proxy with a byte-level "
                    "tokenizer (e.g. 'smollm2-135m') or attribute with the target model"
                )
        n = len(prefix)
        offsets = [(max(a - n, 0), max(b - n, 0)) for a, b in spans]
        return EncodedAnswer(ids=ids, offsets=offsets)


def _first_visible(text: str, start: int, end: int) -> int:
    """Offset of the first non-whitespace character of ``text[start:end]`` (``start`` if there is none)."""
    piece = text[start:end]
    stripped = piece.lstrip()
    return start + len(piece) - len(stripped) if stripped else start
