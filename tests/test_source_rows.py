"""AttributionResult.source_rows: one row per source, built on the one decision layer."""


def test_rows_carry_scores_and_the_rules_verdicts(rendered_result):
    from attribot_rag.decisions import LOO_ONLY_RULE

    res = rendered_result
    for rule in (None, LOO_ONLY_RULE):
        verdicts = res.decisions(rule)
        rows = res.source_rows(rule)
        assert [r.id for r in rows] == [s.id for s in res.sources] and [r.index for r in rows] == list(range(len(rows)))
        assert [r.used for r in rows] == verdicts.used
        assert [r.evidence for r in rows] == [v.evidence for v in verdicts.sources]
        assert [r.score for r in rows] == [d.score for d in res.document_scores]
        assert [r.share for r in rows] == res.source_shares()
        assert rows[0].title == "Capitals" or rows[0].title == res.sources[0].title
        assert [r.text for r in rows] == [s.text for s in res.sources]
    ranked = sorted(rows, key=lambda r: r.rank)
    assert [r.rank for r in ranked] == list(range(1, len(rows) + 1))
    assert [r.score for r in ranked] == sorted((r.score for r in rows), reverse=True)


def test_rows_reuse_decisions_taken_already(rendered_result):
    verdicts = rendered_result.decisions()
    assert [r.used for r in rendered_result.source_rows(decisions=verdicts)] == verdicts.used


def test_to_dict_sources_are_the_rows(rendered_result):
    d = rendered_result.to_dict()
    rows = rendered_result.source_rows()
    assert [s["id"] for s in d["sources"]] == [r.id for r in rows]
    assert [s["used"] for s in d["sources"]] == [r.used for r in rows]
    assert [s["rank"] for s in d["sources"]] == [r.rank for r in rows]
    assert set(d["sources"][0]) >= {"id", "index", "score", "share", "used", "evidence", "sufficiency", "scored_by",
                                    "answer_sentence_scores", "sentences"}
