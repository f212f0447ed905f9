import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attribot_rag import InputError, Source, split_text
from attribot_rag.spans import as_sources, count_tokens


def _tiles(text, sentences):
    return "".join(text[s.seg_start : s.seg_end] for s in sentences) == text


def test_sentences_and_abbreviations():
    text = 'Dr. Smith met J. K. Rowling at 3 p.m. today! Was it fun?  "Yes," she said. The U.S.A. is big.'
    got = [s.text for s in split_text(text)]
    assert got == ["Dr. Smith met J. K. Rowling at 3 p.m. today!", "Was it fun?", '"Yes," she said.',
                   "The U.S.A. is big."]


def test_no_ends_a_sentence_unless_a_number_follows():
    got = [s.text for s in split_text("The answer is no. Berlin is in Germany. See No. 5 and nos. 6-7. Done.")]
    assert got == ["The answer is no.", "Berlin is in Germany.", "See No. 5 and nos. 6-7.", "Done."]


@pytest.mark.parametrize("items", ["Paris is in France.", b"Paris", {"id": "a", "text": "Paris."},
                                   Source("a", "Paris.")])
def test_one_source_instead_of_a_list_is_a_typed_error(items):
    with pytest.raises(InputError, match="wrap it in a list"):
        as_sources(items)


def test_offsets_slice_exactly_and_tile():
    text = "  First sentence here. Second one!\n\nA paragraph without a stop\nNext line."
    sents = split_text(text)
    assert _tiles(text, sents)
    for s in sents:
        assert text[s.start : s.end] == s.text
        assert s.seg_start <= s.start < s.end <= s.seg_end


def test_presplit_sentences_kept_as_given():
    src = Source.from_sentences("d", ["Alpha one.", " Beta two.", "   ", " Gamma."])
    assert src.text == "Alpha one. Beta two.    Gamma."
    assert [s.text for s in src.sentences] == ["Alpha one.", "Beta two.", "Gamma."]
    assert _tiles(src.text, src.sentences)  # the whitespace-only piece joined its neighbour
    assert src.without(src.sentences[1]) == "Alpha one. Gamma."


def test_unstructured_text_is_cut_by_token_budget():
    code = "def f(x):\n    return x * 2\n" * 80
    sents = split_text(code, max_sentence_tokens=40)
    assert len(sents) > 5
    assert _tiles(code, sents)
    assert all(count_tokens(code[s.seg_start : s.seg_end]) <= 40 for s in sents)
    one_line = "word " * 400
    pieces = split_text(one_line, max_sentence_tokens=50)
    assert len(pieces) >= 8 and _tiles(one_line, pieces)


def test_as_sources_coerces_and_validates():
    srcs = as_sources(["plain text.", {"id": "x", "text": "T.", "url": "u"}, {"sentences": ["A.", " B."]}])
    assert [s.id for s in srcs] == ["0", "x", "2"]
    assert srcs[1].metadata == {"url": "u"}
    with pytest.raises(InputError, match="duplicate source id"):
        as_sources([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    with pytest.raises(InputError, match="no 'text'"):
        as_sources([{"id": "a"}])
    with pytest.raises(InputError, match="pass a Source"):
        as_sources([42])


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=400))
def test_property_offsets_exact_over_unicode(text):
    sents = split_text(text, max_sentence_tokens=16)
    if text.strip():
        assert _tiles(text, sents)
    for s in sents:
        assert text[s.start : s.end] == s.text and s.text == s.text.strip() and s.text


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=8))
def test_property_presplit_offsets(pieces):
    src = Source.from_sentences("p", pieces)
    for s in src.sentences:
        assert src.text[s.start : s.end] == s.text
