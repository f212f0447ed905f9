"""Source.prefix: text the prompt shows before a source's text (a metadata header, a "Source 2:" label)
that is never a span: not split into sentences, not ablated on its own, never cited."""

import pytest

from attribot_rag import Attributor, InputError, PromptTemplate, Source, split_source
from attribot_rag.prompt import PromptBuilder

QUESTION = "Who built the Eiffel Tower?"
ANSWER = "Gustave Eiffel built it."
PREFIX = "title: Tower\n\nSource 2:\n"


def _sources():
    return [split_source(s) for s in (
        Source("paris", "Paris is the capital of France. Berlin is in Germany.", prefix="title: Capitals\n\n"),
        Source("tower", "The Eiffel Tower was built in 1889. Gustave Eiffel built it.", prefix=PREFIX),
    )]


def test_the_prefix_is_rendered_before_the_text_and_goes_with_the_whole_source(tok):
    srcs = _sources()
    pb = PromptBuilder(tok, PromptTemplate(document="{text}", user="{documents}\n\nQ: {question}", chat=False))
    full = pb.prompt_text(QUESTION, srcs)
    assert "title: Capitals\n\nParis is the capital" in full and PREFIX + "The Eiffel Tower" in full
    # a sentence ablation keeps the prefix; removing the source removes it too
    one = pb.prompt_text(QUESTION, srcs, (1, 0))
    assert PREFIX + "Gustave Eiffel built it." in one and "built in 1889" not in one
    gone = pb.prompt_text(QUESTION, srcs, (1, None))
    assert "Source 2:" not in gone and "title: Tower" not in gone
    # no prefix: the rendering is what it always was
    plain = [split_source(Source(s.id, s.text)) for s in srcs]
    assert pb.prompt_text(QUESTION, plain) == full.replace("title: Capitals\n\n", "").replace(PREFIX, "")


def test_the_prefix_is_never_a_sentence_and_never_cited(tiny):
    srcs = _sources()
    assert all(s.text in src.text for src in srcs for s in src.sentences)
    result = Attributor(tiny, strategy="exact").attribute(QUESTION, srcs, ANSWER)
    cited = [c.sentence for c in result.citations(top_k=None, min_score=float("-inf"))]
    texts = [s.text for src in result.sources for s in src.sentences] + cited
    assert texts and not any("title:" in t or "Source 2" in t for t in texts)
    assert [src.prefix for src in result.sources] == ["title: Capitals\n\n", PREFIX]


@pytest.mark.parametrize("chat", [True, False])
def test_span_layout_puts_the_prefix_in_the_block_but_in_no_sentence(chat):
    from attribot_rag.testing import tiny_tokenizer

    tok = tiny_tokenizer(chat=chat)
    srcs = _sources()
    pb = PromptBuilder(tok)
    layout = pb.encode_layout(QUESTION, srcs)
    assert layout.ids == pb.encode_prompt(QUESTION, srcs)
    for d, src in enumerate(srcs):
        a, b = layout.ranges[(d, None)]
        assert src.prefix.strip() in tok.decode(layout.ids[a:b])
        first = layout.ranges[(d, 0)][0]
        assert "title:" not in tok.decode(layout.ids[first:b])
        for k, sent in enumerate(src.sentences):
            s, e = layout.ranges[(d, k)]
            assert tok.decode(layout.ids[s:e]).strip() == sent.text
    _, where = pb.template.user_layout(QUESTION, srcs)
    user = pb.template.user_turn(QUESTION, srcs, [s.text for s in srcs])
    for d, src in enumerate(srcs):
        block_start, _, text_start = where[d]
        assert user[text_start:].startswith(src.text.strip())
        assert user[text_start - len(src.prefix):text_start] == src.prefix


def test_a_bad_prefix_is_refused():
    from attribot_rag.spans import as_sources

    with pytest.raises(InputError, match="prefix"):
        as_sources([Source("a", "Text.", prefix="\ud800")])
    with pytest.raises(InputError, match="prefix"):
        as_sources([Source("a", "Text.", prefix=3)])
