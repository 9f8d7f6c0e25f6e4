"""The query language, the engine, and the plain evaluator it must agree with."""

from __future__ import annotations

import pickle
from collections.abc import Hashable, Iterable
from operator import attrgetter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.analysis import _WORD, stem, stem_set, stems, tokens
from mailer.config import SubscriberConfig, SubscriptionConfig
from mailer.errors import QueryError
from mailer.matching import (
    Doc,
    Engine,
    Hit,
    Query,
    Stats,
    highlight_spans,
    match_paper,
    parse_query,
    rescore,
)
from mailer.matching.highlight import spans_by_tokens
from mailer.papers import Paper
from mailer.pipeline import analysed, match_rows, subscription_engine
from mailer.pipeline.match import subscription_order
from mailer.store import NewMatch

PAPER = Paper(
    title="Graph Transformers for Chain-of-Thought RL",
    abstract=(
        "We study a graph-based transformer for reinforcement learning in Zürich. "
        "Tokenization matters; the model reasons with a chain of thought."
    ),
    authors=4,
    organization="Google DeepMind",
    upvotes=12,
)


def matches(query: str, paper: Paper = PAPER, *, stemming: bool = True) -> bool:
    return bool(match_paper(paper, {"q": parse_query(query, stemming=stemming)}))


def hit(query: str, paper: Paper = PAPER) -> Hit:
    (found,) = match_paper(paper, {"q": parse_query(query)})
    return found


# --- the language -------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("transformer", True),
        ("transformers", True),
        ("graph AND nonexistent", False),
        ("graph nonexistent", False),
        ("graph OR nonexistent", True),
        ("graph -transformer", False),
        ("graph NOT nonexistent", True),
        ("NOT survey", True),
        ("nonexistent graph OR transformer", True),
        ("nonexistent (graph OR transformer)", False),
        ("NOT graph OR transformer", True),
    ],
)
def test_boolean_operators_follow_not_and_or_precedence(query: str, expected: bool) -> None:
    assert matches(query) is expected


def test_stemming_matches_inflections() -> None:
    assert matches("reasoning")
    assert matches("transformer")
    assert matches("tokenizations")


def test_exact_phrase_turns_stemming_off() -> None:
    assert matches('="transformers"')
    assert not matches('="reasoning"')
    assert matches('="RL"')
    assert not matches('="RLs"')


def test_subscription_without_stemming_matches_only_surface_forms() -> None:
    assert not matches("reasoning", stemming=False)
    assert matches("reasons", stemming=False)


def test_case_and_accents_are_folded() -> None:
    assert matches("ZURICH")
    assert matches("zürich")


def test_punctuation_splits_words() -> None:
    assert matches("chain-of-thought")
    assert matches('"graph based transformer"')


def test_phrase_needs_adjacent_words_in_order() -> None:
    assert matches('"graph transformer"')
    assert not matches('"transformer graph"')
    assert not matches('"graph learning"')


def test_proximity_allows_words_within_the_window_in_any_order() -> None:
    assert matches('"study transformer"~3')
    assert not matches('"study transformer"~2')
    assert matches('"transformer graph"~1')


def test_prefix_matches_words_starting_with_it() -> None:
    assert matches("token*")
    assert matches("reinforc*")
    assert not matches("tokenizers*")


def test_fields_restrict_where_a_term_may_match() -> None:
    assert matches("title:graph")
    assert not matches("title:study")
    assert matches("abstract:study")
    assert not matches('abstract:"chain of thought RL"')
    assert matches("org:deepmind")
    assert not matches("deepmind")
    assert matches("title:(graph transformer)")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("upvotes>=12", True),
        ("upvotes>12", False),
        ("upvotes<13", True),
        ("upvotes=12", True),
        ("authors<=3", False),
        ("authors<=4 graph", True),
        ("upvotes:>=10", True),
        ("upvotes:[1 TO 11]", False),
    ],
)
def test_numeric_filters(query: str, expected: bool) -> None:
    assert matches(query) is expected


def test_unknown_author_count_fails_every_comparison() -> None:
    assert not matches("authors<=100", Paper("t", "a"))


@pytest.mark.parametrize(
    ("query", "position", "expected"),
    [
        ("diffusion AND", 13, "after 'AND'"),
        ("(diffusion OR score", 19, "')' to close"),
        ("diffusion)", 9, "before ')'"),
        ('"open phrase', 0, "closing '\"'"),
        ("venue:neurips", 0, "expected title, abstract, org, upvotes or authors"),
        ("upvotes:many", 8, "whole number"),
        ("diff*sion", 0, "wildcards"),
        ("diffusion^2", 0, "boosts"),
    ],
)
def test_bad_query_reports_position_and_what_was_expected(
    query: str, position: int, expected: str
) -> None:
    with pytest.raises(QueryError) as caught:
        parse_query(query)
    assert caught.value.position == position
    assert f"position {position}" in caught.value.message
    assert expected in caught.value.message


# --- terms, scores and highlighting ---------------------------------------------


def test_hit_records_the_terms_that_made_it_match() -> None:
    assert set(hit("graph OR nonexistent OR (study AND absent)").terms) == {"graph"}
    assert set(hit('"graph transformer" -absent').terms) == {"graph transformer"}


def test_terms_are_ranked_title_hits_first() -> None:
    assert hit("study OR graph").terms == ("graph", "study")


def test_title_hit_scores_above_abstract_hit() -> None:
    title = Paper("Diffusion sampling", "We study a method for images.")
    abstract = Paper("Sampling images", "We study a diffusion method.")
    query: dict[Hashable, Query] = {"q": parse_query("diffusion")}
    stats = Stats()
    docs = [Doc(title, stats), Doc(abstract, stats)]
    for doc in docs:
        stats.observe(doc)
    (a,), (b,) = (match_paper(d, query) for d in docs)
    assert a.score > b.score > 0


def test_highlight_covers_surface_variants_of_a_stemmed_term() -> None:
    text = "Transformers and a transformer, transforming"
    assert highlight_spans(text, ["transformer"]) == [(0, 12), (19, 30), (32, 44)]
    assert highlight_spans(text, ["=transformer"]) == [(19, 30)]


def test_highlight_covers_each_phrase_run_and_prefix() -> None:
    text = "chain-of-thought, or a chain of thought; tokens"
    assert highlight_spans(text, ["chain of thought"]) == [(0, 16), (23, 39)]
    assert highlight_spans(text, ["token*"]) == [(41, 47)]
    assert highlight_spans(text, ["org:chain"]) == []


def test_highlight_of_a_term_that_is_no_single_word_finds_nothing() -> None:
    text = "Chain-of-Thought supervision"
    assert highlight_spans(text, ["chain-of-thoughts", "=chain-of", "chain-*"]) == []


def test_every_word_starts_with_all_but_the_last_two_letters_of_its_stem() -> None:
    # What the ASCII search of highlight_spans rests on, over the stemmer's
    # exceptions and the suffixes it rewrites.
    words = ["skies", "dying", "lying", "tying", "idly", "gently", "ugly", "early", "only"]
    words += ["singly", "news", "howe", "atlas", "cosmos", "bias", "andes", "skis", "sky"]
    words += [
        base + suffix
        for base in ("happ", "effici", "capab", "organ", "relat", "hop", "activ", "possib")
        for suffix in ("y", "ies", "ied", "ing", "ility", "ization", "ational", "ency", "ably")
    ]
    for word in words:
        assert word.startswith(stem(word)[:-2]), word


_HIGHLIGHT_WORDS = st.sampled_from(
    [
        "dying",
        "die",
        "transformer",
        "Transformers",
        "model",
        "models",
        "modelling",
        "chain",
        "thought",
        "a",
        "token",
        "tokens",
        "diffusion",
        "agent",
        "agents",
        "x",
        "2d",
        "3",
        "happy",
        "happiness",
    ]
)
_HIGHLIGHT_TERMS = st.one_of(
    _HIGHLIGHT_WORDS.map(str.lower),
    _HIGHLIGHT_WORDS.map(lambda w: "=" + w.lower()),
    _HIGHLIGHT_WORDS.map(lambda w: w.lower()[:2] + "*"),
    st.tuples(_HIGHLIGHT_WORDS, _HIGHLIGHT_WORDS).map(lambda p: f"{p[0]} {p[1]}".lower()),
    _HIGHLIGHT_WORDS.map(lambda w: "org:" + w),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(_HIGHLIGHT_WORDS, st.sampled_from([" ", ", ", "-", "_", ". ", "é"]))),
    st.lists(_HIGHLIGHT_TERMS, max_size=4),
)
def test_highlight_spans_are_those_of_the_whole_tokenised_text(
    pieces: list[str], terms: list[str]
) -> None:
    text = "".join(pieces)
    assert highlight_spans(text, terms) == _merged(spans_by_tokens(text, terms))


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(end, out[-1][1]))
        else:
            out.append((start, end))
    return out


# --- analysis ------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_ascii_fast_split_equals_the_word_regex(text: str) -> None:
    assert tokens(text) == _WORD.findall(text.casefold())


def test_stems_of_uncached_words_are_computed() -> None:
    words = ["unseenwordings", "graphs", "unseenwordings"]
    assert stems(words) == [stem(w) for w in words]
    assert stem_set(["otherunseenings", "graphs"]) == {stem("otherunseenings"), "graph"}


# Stats is internal (it may move into the store); these pin what it must report.


def observed(*papers: Paper) -> Stats:
    stats = Stats()
    for paper in papers:
        stats.observe(Doc(paper, stats))
    return stats


def test_stats_count_the_papers_observed() -> None:
    papers = [Paper(f"Paper {n}", "An abstract.") for n in range(7)]
    assert observed(*papers).papers == 7


def test_stats_count_each_stem_once_per_paper_that_has_it() -> None:
    stats = observed(
        Paper("Graph graphs", "A graph of graphs."),
        Paper("Graph transformers", "Attention only."),
        Paper("Transformers", "No graphs here, only transformers."),
    )
    assert (stats.df["graph"], stats.df["transform"], stats.df["attent"]) == (3, 2, 1)
    assert stats.df["absent"] == 0


def test_stats_sum_the_field_lengths_in_words() -> None:
    stats = observed(Paper("Two words", "Three words here."), Paper("One", "Four words in all."))
    assert (stats.title_length, stats.abstract_length) == (3, 7)
    assert stats.average() == (1.5, 3.5)


def test_a_word_in_fewer_papers_weighs_more() -> None:
    stats = observed(
        Paper("Graph transformers", "A graph."),
        Paper("Graph models", "A graph."),
        Paper("Sparse graphs", "A sparse graph."),
    )
    assert stats.idf("spars") > stats.idf("graph") > 0


# --- the engine equals the reference ----------------------------------------------


def test_engine_counts_queries_needing_no_term() -> None:
    engine = Engine(
        {1: parse_query("NOT survey"), 2: parse_query("upvotes>=3"), 3: parse_query("x")}
    )
    engine.match(Doc(PAPER))
    assert len(engine.always) == 2
    assert engine.always_checked == 2


def test_identical_queries_are_evaluated_once_and_reported_for_each() -> None:
    engine = Engine({"a": parse_query("graph study"), "b": parse_query("graph study")})
    assert len(engine.nodes) == 1
    assert {h.query for h in engine.match(Doc(PAPER))} == {"a", "b"}


def test_scored_gives_each_matching_tree_once_with_its_hits_terms_and_score() -> None:
    engine = Engine({"a": parse_query("graph study"), "b": parse_query("graph study")})
    matches = engine.match(Doc(PAPER))
    ((uid, terms, score),) = matches.scored()
    assert engine.keys[uid] == ["a", "b"]
    assert {(h.terms, h.score) for h in matches} == {(terms, score)}


def test_an_engine_pickled_and_loaded_again_finds_the_same_hits() -> None:
    """A pass's engine goes to a worker process pickled (its checks and
    scorers are closures): it is built there again from its queries."""
    queries: dict[Hashable, Query] = {
        ("ada", "a"): parse_query("graph study"),
        ("ada", "b"): parse_query('"graph study"~3 OR grap*'),
        ("lin", "c"): parse_query("NOT survey upvotes>=0"),
        ("lin", "d"): parse_query("title:nothing"),
    }
    engine = Engine(queries)
    again = pickle.loads(pickle.dumps(engine))
    stats = Stats()
    stats.observe(Doc(PAPER))
    found = _by_query(engine.match(Doc(PAPER, stats)))
    assert len(found) == 3
    assert _by_query(again.match(Doc(PAPER, stats))) == found


VOCAB = [
    "graph",
    "graphs",
    "transformer",
    "learning",
    "rl",
    "agent",
    "token",
    "zurich",
    "model",
    "modelling",
]
words = st.sampled_from(VOCAB)
text = st.lists(words, min_size=0, max_size=12).map(" ".join)
papers = st.builds(
    Paper,
    title=text,
    abstract=text,
    authors=st.none() | st.integers(1, 6),
    organization=st.none() | st.sampled_from(["Google", "Agent Labs", "Graph Inc"]),
    upvotes=st.integers(0, 6),
)


def _leaf() -> st.SearchStrategy[str]:
    field = st.sampled_from(["", "title:", "abstract:", "org:"])
    term = st.one_of(
        words,
        words.map(lambda w: f"={w}"),
        words.map(lambda w: w[: max(1, len(w) // 2)] + "*"),
        st.lists(words, min_size=2, max_size=3).map(lambda ws: '"' + " ".join(ws) + '"'),
        st.tuples(st.lists(words, min_size=2, max_size=3), st.integers(1, 4)).map(
            lambda p: '"' + " ".join(p[0]) + f'"~{p[1]}'
        ),
    )
    numeric = st.tuples(
        st.sampled_from(["upvotes", "authors"]),
        st.sampled_from([">=", "<=", "<", ">", "="]),
        st.integers(0, 6),
    ).map(lambda t: "".join(map(str, t)))
    return st.one_of(st.tuples(field, term).map("".join), numeric)


queries = st.recursive(
    _leaf(),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from([" AND ", " OR ", " "]), inner).map(
            lambda t: f"({t[0]}{t[1]}{t[2]})"
        ),
        inner.map(lambda q: f"NOT {q}"),
        inner.map(lambda q: f"-{q}"),
    ),
    max_leaves=6,
)


def _by_query(hits: Iterable[Hit]) -> dict[Hashable, tuple[tuple[str, ...], float]]:
    # Exact floats: the engine must sum and rank as ``score`` does.
    return {h.query: (h.terms, h.score) for h in hits}


# Conjunctions of leaves in any field (phrases, prefixes, filters too) and of
# negated queries, whose terms the engine knows in advance; and ORs of them.
conjunctions = st.lists(
    _leaf() | _leaf().map(lambda q: f"-{q}") | queries.map(lambda q: f"NOT {q}"),
    min_size=1,
    max_size=4,
).map(" ".join)
mixed_ors = st.lists(conjunctions.map(lambda q: f"({q})"), min_size=2, max_size=3).map(" OR ".join)

# The engine's flat paths: conjunctions of words, some exact or negated (nested
# too), and ORs of words and prefixes.
flat_queries = st.one_of(
    st.lists(
        st.tuples(st.sampled_from(["", "=", "-", "-="]), words).map("".join),
        min_size=1,
        max_size=4,
    ).map(" ".join),
    st.lists(words, min_size=1, max_size=3).map(lambda ws: f"{ws[0]} ({' '.join(ws)})"),
    st.lists(
        words | words.map(lambda w: f"={w}") | words.map(lambda w: w[:2] + "*"),
        min_size=2,
        max_size=4,
    ).map(" OR ".join),
)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(_leaf() | queries | flat_queries | conjunctions | mixed_ors, min_size=1, max_size=16),
    st.lists(papers, min_size=1, max_size=5),
    st.booleans(),
)
def test_engine_equals_reference_evaluator(
    texts: list[str], batch: list[Paper], stemming: bool
) -> None:
    parsed: dict[Hashable, Query] = {
        i: parse_query(q, stemming=stemming) for i, q in enumerate(texts)
    }
    stats = Stats()
    docs = [Doc(p, stats) for p in batch]
    for doc in docs[:2]:
        stats.observe(doc)
    engine = Engine(parsed, stats)
    for doc in docs:
        found = engine.match(doc)
        assert sorted(map(str, found.queries())) == sorted(str(h.query) for h in found)
        assert len(found) == len(found.hits())
        assert _by_query(found) == _by_query(match_paper(doc, parsed))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_leaf() | queries | flat_queries | conjunctions | mixed_ors, min_size=1, max_size=8),
    st.lists(papers, min_size=1, max_size=4),
    st.booleans(),
)
def test_rescoring_recorded_terms_gives_the_hits_terms_and_score(
    texts: list[str], batch: list[Paper], stemming: bool
) -> None:
    """Digests weigh a match's recorded terms (display strings) again; with
    the same statistics that must give back exactly the engine's ranking."""
    parsed: dict[Hashable, Query] = {
        i: parse_query(q, stemming=stemming) for i, q in enumerate(texts)
    }
    stats = Stats()
    docs = [Doc(p, stats) for p in batch]
    for doc in docs:
        stats.observe(doc)
    engine = Engine(parsed, stats)
    for doc in docs:
        for h in engine.match(doc):
            terms, value = rescore(Doc(doc.paper, stats), h.terms)
            assert terms == h.terms
            assert value == pytest.approx(h.score)


def test_rescoring_follows_the_statistics() -> None:
    """The same terms weigh more when the corpus says they are rarer."""
    paper = Paper("Diffusion sampling", "We study diffusion.")
    common, rare = Stats(), Stats()
    for n in range(10):
        common.observe_paper(Paper(f"diffusion {n}", "diffusion"))
        rare.observe_paper(Paper(f"other {n}", "words"))
    assert (
        rescore(Doc(paper, rare), ["diffusion"])[1] > rescore(Doc(paper, common), ["diffusion"])[1]
    )


def test_observing_a_paper_counts_as_observing_its_doc() -> None:
    paper = Paper("Graph Transformers for graphs", "Transformers learn; graphs help.")
    by_doc, by_paper = Stats(), Stats()
    by_doc.observe(Doc(paper))
    by_paper.observe_paper(paper)
    assert by_paper == by_doc


def test_prefixes_of_different_lengths_all_select_their_papers() -> None:
    queries: dict[Hashable, Query] = {
        n: parse_query(q) for n, q in enumerate(["t*", "gr*", "tran*", "reinforc*"])
    }
    engine = Engine(queries)
    assert {h.query for h in engine.match(Doc(PAPER))} == {0, 1, 2, 3}


# --- match rows -----------------------------------------------------------------


def test_match_rows_give_one_row_per_subscriber_and_drop_unknown_subscribers() -> None:
    queries: dict[Hashable, Query] = {
        ("ada@x", "Graphs"): parse_query("graph"),
        ("ada@x", "RL"): parse_query('"reinforcement learning"'),
        ("bob@x", "Thought"): parse_query("thought"),
        ("gone@x", "Graphs"): parse_query("graph"),
    }
    engine = Engine(queries)
    (doc,) = (d for _, d in analysed([(7, PAPER)], engine.stats))
    hits = {h.query: h for h in engine.match(doc)}
    order = {("ada@x", "Graphs"): 0, ("ada@x", "RL"): 1, ("bob@x", "Thought"): 0}
    rows = match_rows(engine, [(7, doc)], {"ada@x": 1, "bob@x": 2}, order=order)
    ada, bob = sorted(rows, key=attrgetter("subscriber_id"))
    first, second = hits["ada@x", "Graphs"], hits["ada@x", "RL"]
    assert ada == NewMatch(
        1,
        7,
        ("Graphs", "RL"),
        (first.terms, second.terms),
        (first.score, second.score),
        rescore(doc, [*first.terms, *second.terms])[0],
    )
    thought = hits["bob@x", "Thought"]
    assert bob == NewMatch(2, 7, ("Thought",), (thought.terms,), (thought.score,), thought.terms)


def test_a_paper_several_subscriptions_match_lists_them_in_the_order_configured() -> None:
    """Not in the order the engine found them (that of a set of words, which
    differs between processes) nor by name: as the subscriber listed them,
    which is also the order of their digest's sections."""
    words = ["tokenization", "graph", "model", "chain", "reinforcement", "thought", "study"]
    sub = SubscriberConfig(
        email="ada@example.org",
        subscriptions=[
            SubscriptionConfig(name=f"{len(words) - n} {word}", query=word)
            for n, word in enumerate(words)
        ],
    )
    engine = subscription_engine(sub, Stats())
    rows = match_rows(
        engine,
        analysed([(7, PAPER)], engine.stats),
        {sub.email: 1},
        order=subscription_order([sub]),
    )
    (row,) = rows
    assert row.subscriptions == tuple(q.name for q in sub.subscriptions)
    assert row.subscription_terms == tuple((w,) for w in words)
