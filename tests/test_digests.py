"""build_digest: which matched papers a digest shows, in what order, under
which subscription, and what it carries for rendering.

Pure values in and out: papers, matches and recipients are built here directly.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime

import pytest

import mailer.digests as digests_module
from mailer.analysis import Doc, Scale, Stats, StemCounts
from mailer.digests import Digest, Entry, Matched, Ranking, Recipient, Section, build_digest
from mailer.matching import rescore
from mailer.papers import Paper

ADA = Recipient("ada@example.org", "Ada", ("Diffusion", "Agents", "Graphs"))


def paper(title: str, *, upvotes: int = 0, published: date | None = None) -> Paper:
    return Paper(title, f"The abstract of {title}.", upvotes=upvotes, published=published)


def matched(
    title: str,
    score: float = 1.0,
    *,
    subscription: str = "Diffusion",
    upvotes: int = 0,
    published: date | None = None,
) -> Matched:
    return Matched(
        paper(title, upvotes=upvotes, published=published), (subscription,), (), (score,)
    )


def titles(digest: Digest) -> list[str]:
    return [e.paper.title for e in digest.entries]


def marked(text: str, spans: tuple[tuple[int, int], ...]) -> list[str]:
    return [text[start:end] for start, end in spans]


# --- the cap ------------------------------------------------------------------


def test_max_papers_keeps_only_that_many_papers() -> None:
    papers = [matched(f"Paper {n}", score=n) for n in range(1, 6)]
    digest = build_digest(ADA, papers, max_papers=3)
    assert digest.count == 3


def test_papers_over_the_cap_are_counted_in_more() -> None:
    papers = [matched(f"Paper {n}", score=n) for n in range(1, 6)]
    assert build_digest(ADA, papers, max_papers=3).more == 2


def test_the_cap_keeps_the_best_papers() -> None:
    papers = [matched(f"Paper {n}", score=n) for n in range(1, 6)]
    digest = build_digest(ADA, papers, max_papers=2)
    assert titles(digest) == ["Paper 5", "Paper 4"]


def test_a_cap_at_the_number_of_papers_leaves_nothing_more() -> None:
    papers = [matched(f"Paper {n}", score=n) for n in range(1, 4)]
    digest = build_digest(ADA, papers, max_papers=3)
    assert (digest.count, digest.more) == (3, 0)


def test_a_cap_above_the_number_of_papers_keeps_all() -> None:
    papers = [matched(f"Paper {n}", score=n) for n in range(1, 4)]
    digest = build_digest(ADA, papers, max_papers=10)
    assert (digest.count, digest.more) == (3, 0)


def test_max_papers_none_keeps_every_paper() -> None:
    papers = [matched(f"Paper {n}", score=n) for n in range(1, 31)]
    digest = build_digest(ADA, papers, max_papers=None)
    assert (digest.count, digest.more) == (30, 0)


def test_without_max_papers_every_paper_is_kept() -> None:
    papers = [matched(f"Paper {n}", score=n) for n in range(1, 31)]
    digest = build_digest(ADA, papers)
    assert (digest.count, digest.more) == (30, 0)


def test_max_papers_zero_keeps_nothing_and_counts_everything_as_more() -> None:
    papers = [matched(f"Paper {n}", score=n) for n in range(1, 4)]
    digest = build_digest(ADA, papers, max_papers=0)
    assert (digest.count, digest.more, digest.sections) == (0, 3, ())


# --- best first -----------------------------------------------------------------


def test_higher_score_comes_first() -> None:
    papers = [matched("Low", 1.0), matched("High", 3.0), matched("Middle", 2.0)]
    assert titles(build_digest(ADA, papers)) == ["High", "Middle", "Low"]


def test_score_outranks_upvotes() -> None:
    papers = [matched("Popular", 1.0, upvotes=100), matched("Relevant", 2.0, upvotes=0)]
    assert titles(build_digest(ADA, papers)) == ["Relevant", "Popular"]


def test_score_outranks_newer_publication() -> None:
    papers = [
        matched("Newer", 1.0, published=date(2026, 11, 22)),
        matched("Relevant", 2.0, published=date(2026, 11, 1)),
    ]
    assert titles(build_digest(ADA, papers)) == ["Relevant", "Newer"]


def test_equal_scores_rank_more_upvotes_first() -> None:
    papers = [matched("Few", 1.0, upvotes=2), matched("Many", 1.0, upvotes=9)]
    assert titles(build_digest(ADA, papers)) == ["Many", "Few"]


def test_upvotes_outrank_newer_publication() -> None:
    papers = [
        matched("Newer", 1.0, upvotes=1, published=date(2026, 11, 22)),
        matched("Upvoted", 1.0, upvotes=5, published=date(2026, 11, 1)),
    ]
    assert titles(build_digest(ADA, papers)) == ["Upvoted", "Newer"]


def test_equal_scores_and_upvotes_rank_newer_first() -> None:
    papers = [
        matched("Older", 1.0, upvotes=3, published=date(2026, 11, 1)),
        matched("Newer", 1.0, upvotes=3, published=date(2026, 11, 20)),
        matched("Middle", 1.0, upvotes=3, published=date(2026, 11, 10)),
    ]
    assert titles(build_digest(ADA, papers)) == ["Newer", "Middle", "Older"]


def test_a_paper_without_a_date_comes_after_dated_ties() -> None:
    papers = [
        matched("Undated", 1.0, upvotes=3, published=None),
        matched("Old", 1.0, upvotes=3, published=date(1990, 1, 1)),
        matched("New", 1.0, upvotes=3, published=date(2026, 11, 20)),
    ]
    assert titles(build_digest(ADA, papers)) == ["New", "Old", "Undated"]


def test_ordering_holds_across_the_full_date_range() -> None:
    papers = [
        matched("Earliest", 1.0, published=date.min),
        matched("Latest", 1.0, published=date.max),
        matched("Undated", 1.0, published=None),
    ]
    assert titles(build_digest(ADA, papers)) == ["Latest", "Earliest", "Undated"]


def test_complete_ties_keep_the_given_order() -> None:
    papers = [matched("First", 1.0), matched("Second", 1.0), matched("Third", 1.0)]
    assert titles(build_digest(ADA, papers)) == ["First", "Second", "Third"]


def test_a_paper_without_scores_ranks_as_score_zero() -> None:
    unscored = Matched(paper("Unscored", upvotes=50), ("Diffusion",), ())
    papers = [unscored, matched("Scored", 0.5)]
    assert titles(build_digest(ADA, papers)) == ["Scored", "Unscored"]


def test_a_paper_ranks_by_its_best_score() -> None:
    both = Matched(paper("Both"), ("Diffusion", "Agents"), (), (0.5, 3.0))
    papers = [matched("Two", 2.0, subscription="Agents"), both]
    assert titles(build_digest(ADA, papers)) == ["Both", "Two"]


def test_entries_are_best_first_within_a_section() -> None:
    papers = [matched("B", 2.0), matched("C", 1.0), matched("A", 3.0)]
    (section,) = build_digest(ADA, papers).sections
    assert [e.paper.title for e in section.entries] == ["A", "B", "C"]


# --- sections -------------------------------------------------------------------


def test_a_paper_is_shown_under_its_highest_scoring_subscription() -> None:
    m = Matched(paper("Agentic Diffusion"), ("Diffusion", "Agents", "Graphs"), (), (1.0, 5.0, 2.0))
    (entry,) = build_digest(ADA, [m]).entries
    assert entry.subscription == "Agents"


def test_a_paper_best_at_its_first_subscription_is_shown_under_it() -> None:
    m = Matched(paper("Diffusion Agents"), ("Diffusion", "Agents"), (), (4.0, 1.0))
    (entry,) = build_digest(ADA, [m]).entries
    assert entry.subscription == "Diffusion"


def test_a_paper_best_at_its_last_subscription_is_shown_under_it() -> None:
    m = Matched(paper("Graph Agents"), ("Diffusion", "Agents", "Graphs"), (), (1.0, 2.0, 3.0))
    (entry,) = build_digest(ADA, [m]).entries
    assert entry.subscription == "Graphs"


def test_a_paper_without_scores_is_shown_under_its_first_subscription() -> None:
    m = Matched(paper("Agentic Diffusion"), ("Agents", "Diffusion"), ())
    (entry,) = build_digest(ADA, [m]).entries
    assert (entry.subscription, entry.also) == ("Agents", ("Diffusion",))


def test_a_paper_lists_its_other_subscriptions_in_also() -> None:
    m = Matched(paper("Agentic Diffusion"), ("Diffusion", "Agents", "Graphs"), (), (1.0, 5.0, 2.0))
    (entry,) = build_digest(ADA, [m]).entries
    assert entry.also == ("Diffusion", "Graphs")


def test_a_paper_of_one_subscription_has_nothing_in_also() -> None:
    (entry,) = build_digest(ADA, [matched("Diffusion Only")]).entries
    assert entry.also == ()


def test_a_paper_appears_once_however_many_subscriptions_it_matched() -> None:
    m = Matched(paper("Agentic Diffusion"), ("Diffusion", "Agents", "Graphs"), (), (1.0, 5.0, 2.0))
    digest = build_digest(ADA, [m])
    assert (digest.count, [s.subscription for s in digest.sections]) == (1, ["Agents"])


def test_sections_follow_the_recipients_subscription_order() -> None:
    papers = [
        matched("Graph paper", 9.0, subscription="Graphs"),
        matched("Agent paper", 5.0, subscription="Agents"),
        matched("Diffusion paper", 1.0, subscription="Diffusion"),
    ]
    digest = build_digest(ADA, papers)
    assert [s.subscription for s in digest.sections] == ["Diffusion", "Agents", "Graphs"]


def test_subscriptions_without_papers_get_no_section() -> None:
    papers = [matched("Graph paper", subscription="Graphs")]
    digest = build_digest(ADA, papers)
    assert [s.subscription for s in digest.sections] == ["Graphs"]


def test_a_subscription_emptied_by_the_cap_gets_no_section() -> None:
    papers = [
        matched("Strong", 5.0, subscription="Agents"),
        matched("Weak", 1.0, subscription="Diffusion"),
    ]
    digest = build_digest(ADA, papers, max_papers=1)
    assert [s.subscription for s in digest.sections] == ["Agents"]


def test_no_matches_make_a_digest_without_sections() -> None:
    digest = build_digest(ADA, [])
    assert (digest.sections, digest.count, digest.more, digest.entries) == ((), 0, 0, [])


def test_a_paper_whose_subscription_the_recipient_no_longer_has_still_gets_a_section() -> None:
    papers = [
        matched("Renamed", 2.0, subscription="Old name"),
        matched("Diffusion paper", 1.0, subscription="Diffusion"),
    ]
    digest = build_digest(ADA, papers)
    assert [(s.subscription, [e.paper.title for e in s.entries]) for s in digest.sections] == [
        ("Diffusion", ["Diffusion paper"]),
        ("Old name", ["Renamed"]),
    ]


def test_sections_hold_their_own_papers() -> None:
    papers = [
        matched("D1", 4.0, subscription="Diffusion"),
        matched("A1", 3.0, subscription="Agents"),
        matched("D2", 2.0, subscription="Diffusion"),
        matched("A2", 1.0, subscription="Agents"),
    ]
    digest = build_digest(ADA, papers)
    assert [(s.subscription, [e.paper.title for e in s.entries]) for s in digest.sections] == [
        ("Diffusion", ["D1", "D2"]),
        ("Agents", ["A1", "A2"]),
    ]


# --- what an entry carries ------------------------------------------------------


def test_an_entry_carries_its_paper() -> None:
    m = matched("Diffusion Models", upvotes=4, published=date(2026, 11, 20))
    (entry,) = build_digest(ADA, [m]).entries
    assert entry.paper is m.paper


def test_an_entry_carries_the_terms_in_the_given_order() -> None:
    m = Matched(paper("Diffusion Agents"), ("Diffusion",), ("score matching", "diffusion", "agent"))
    (entry,) = build_digest(ADA, [m]).entries
    assert entry.terms == ("score matching", "diffusion", "agent")


def test_title_marks_cover_the_matched_words() -> None:
    title = "Guided Diffusion Model Distillation"
    m = Matched(Paper(title, "Nothing here."), ("Diffusion",), ("diffusion model",))
    (entry,) = build_digest(ADA, [m]).entries
    assert marked(title, entry.title_marks) == ["Diffusion Model"]


def test_abstract_marks_cover_the_matched_words_and_their_variants() -> None:
    abstract = "An agent plans; two agents argue about diffusion."
    m = Matched(Paper("Plans", abstract), ("Agents",), ("agent", "diffusion"))
    (entry,) = build_digest(ADA, [m]).entries
    assert marked(abstract, entry.abstract_marks) == ["agent", "agents", "diffusion"]


def test_marks_are_per_field() -> None:
    m = Matched(Paper("Graph Agents", "About diffusion."), ("Agents",), ("agent", "diffusion"))
    (entry,) = build_digest(ADA, [m]).entries
    assert marked("Graph Agents", entry.title_marks) == ["Agents"]
    assert marked("About diffusion.", entry.abstract_marks) == ["diffusion"]


def test_without_terms_nothing_is_marked() -> None:
    m = Matched(Paper("Diffusion", "Diffusion again."), ("Diffusion",), ())
    (entry,) = build_digest(ADA, [m]).entries
    assert (entry.terms, entry.title_marks, entry.abstract_marks) == ((), (), ())


def test_an_entry_is_exactly_its_parts() -> None:
    p = Paper("Diffusion Agents", "An agent.")
    m = Matched(p, ("Diffusion", "Agents"), ("agent",), (1.0, 2.0))
    (entry,) = build_digest(ADA, [m]).entries
    assert entry == Entry(
        paper=p,
        subscription="Agents",
        also=("Diffusion",),
        terms=("agent",),
        title_marks=((10, 16),),
        abstract_marks=((3, 8),),
    )


# --- what the digest carries ----------------------------------------------------


def test_the_digest_is_for_its_recipient() -> None:
    assert build_digest(ADA, []).recipient is ADA


def test_since_is_carried() -> None:
    since = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
    assert build_digest(ADA, [], since=since).since == since


def test_since_defaults_to_none() -> None:
    assert build_digest(ADA, []).since is None


def test_test_flag_is_carried() -> None:
    assert build_digest(ADA, [], test=True).test is True


def test_test_flag_defaults_to_false() -> None:
    assert build_digest(ADA, []).test is False


def test_count_is_the_number_of_entries_across_sections() -> None:
    papers = [
        matched("D", subscription="Diffusion"),
        matched("A1", subscription="Agents"),
        matched("A2", subscription="Agents"),
    ]
    assert build_digest(ADA, papers).count == 3


def test_entries_run_section_by_section() -> None:
    papers = [
        matched("A", 3.0, subscription="Agents"),
        matched("G", 2.0, subscription="Graphs"),
        matched("D", 1.0, subscription="Diffusion"),
    ]
    assert titles(build_digest(ADA, papers)) == ["D", "A", "G"]


def test_count_and_entries_of_a_hand_built_digest() -> None:
    a, b, c = (Entry(paper(t), "S", (), (), (), ()) for t in "ABC")
    digest = Digest(ADA, (Section("S", (a, b)), Section("T", (c,))))
    assert (digest.count, digest.entries) == (3, [a, b, c])


# --- Matched --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "best"),
    [
        ((3.0, 1.0, 2.0), "A"),
        ((1.0, 3.0, 2.0), "B"),
        ((1.0, 2.0, 3.0), "C"),
        ((), "A"),
    ],
)
def test_matched_best_is_the_subscription_with_the_highest_score(
    scores: tuple[float, ...], best: str
) -> None:
    assert Matched(paper("P"), ("A", "B", "C"), (), scores).best == best


def test_matched_score_is_its_highest_score() -> None:
    assert Matched(paper("P"), ("A", "B"), (), (0.5, 2.5)).score == 2.5


def test_matched_score_without_scores_is_zero() -> None:
    assert Matched(paper("P"), ("A",), ()).score == 0.0


# --- Ranking: recorded matches rescored against one set of statistics -----------

# "agent" is in nine papers of ten, "diffusion" in none: against these
# statistics a diffusion hit outweighs an agent hit, though alphabetically
# (the tie-break when weights are equal) "agent" comes first.
CORPUS = Stats(papers=10, df=Counter({"agent": 9}), title_length=30, abstract_length=300)
BOTH = Paper("Diffusion Agents", "Nothing else here.")


def test_ranking_weighs_terms_against_its_statistics() -> None:
    m = Ranking(CORPUS).matched(BOTH, ["S"], [["agent", "diffusion"]])
    assert m.terms == ("diffusion", "agent")


def test_ranking_without_corpus_statistics_weighs_equal_hits_equally() -> None:
    m = Ranking(Stats()).matched(BOTH, ["S"], [["diffusion", "agent"]])
    (score,) = m.scores
    assert m.terms == ("agent", "diffusion")
    assert score == pytest.approx(2 * Ranking(Stats()).matched(BOTH, ["S"], [["agent"]]).score)


def test_a_rare_term_scores_higher_than_a_common_one() -> None:
    ranking = Ranking(CORPUS)
    rare = ranking.matched(BOTH, ["S"], [["diffusion"]]).score
    common = ranking.matched(BOTH, ["S"], [["agent"]]).score
    assert rare > common > 0


def test_a_title_hit_outweighs_an_abstract_hit() -> None:
    p = Paper("Agents", "About diffusion.")
    m = Ranking(Stats()).matched(p, ["S"], [["diffusion", "agent"]])
    assert m.terms == ("agent", "diffusion")


def test_each_subscription_is_scored_by_its_own_terms() -> None:
    ranking = Ranking(CORPUS)
    alone = [ranking.matched(BOTH, ["S"], [terms]).score for terms in (["diffusion"], ["agent"])]
    m = ranking.matched(BOTH, ["Diffusion", "Agents"], [["diffusion"], ["agent"]])
    assert m.scores == tuple(alone)
    assert alone[0] != alone[1]


def test_a_paper_of_several_subscriptions_has_all_their_terms_heaviest_first() -> None:
    m = Ranking(CORPUS).matched(BOTH, ["Agents", "Diffusion"], [["agent"], ["diffusion"]])
    assert m.terms == ("diffusion", "agent")


def test_a_term_two_subscriptions_share_is_listed_once() -> None:
    m = Ranking(CORPUS).matched(BOTH, ["A", "B"], [["agent", "diffusion"], ["diffusion"]])
    assert m.terms == ("diffusion", "agent")


def test_a_paper_of_one_subscription_has_its_terms_heaviest_first() -> None:
    m = Ranking(CORPUS).matched(BOTH, ["S"], [["agent", "diffusion"]])
    assert (m.subscriptions, m.terms) == (("S",), ("diffusion", "agent"))


def test_ranking_makes_a_matched_paper_for_rendering() -> None:
    m = Ranking(CORPUS).matched(BOTH, ["Diffusion", "Agents"], [["diffusion"], ["agent"]])
    assert m.paper is BOTH
    assert m.subscriptions == ("Diffusion", "Agents")
    assert m.best == "Diffusion"


def test_a_paper_is_analysed_once_for_every_subscriber_it_matched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    analysed: list[Paper] = []

    def counting(paper: Paper, scale: Scale) -> StemCounts:
        analysed.append(paper)
        return StemCounts(paper, scale)

    monkeypatch.setattr(digests_module, "StemCounts", counting)
    ranking = Ranking(CORPUS)
    other = Paper("Other", "Agents.")
    for _ in range(3):
        ranking.matched(BOTH, ["S"], [["agent"]])
        ranking.matched(other, ["S"], [["agent"]])
    assert analysed == [BOTH, other]


def test_the_analysed_papers_are_forgotten_past_the_cache_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    analysed: list[str] = []

    def counting(paper: Paper, scale: Scale) -> StemCounts:
        analysed.append(paper.title)
        return StemCounts(paper, scale)

    monkeypatch.setattr(digests_module, "StemCounts", counting)
    monkeypatch.setattr(digests_module, "COUNTS_CACHE", 2)
    ranking = Ranking(CORPUS)
    a, b, c = (Paper(t, "Agents.") for t in "ABC")
    for p in (a, b, a, c, b, a):
        ranking.matched(p, ["S"], [["agent"]])
    # A and B fill the cache; C clears it and is kept alone, so B and A are analysed again.
    assert analysed == ["A", "B", "C", "B", "A"]


@pytest.mark.parametrize(
    "terms",
    [("agent",), ("agent", "survey"), ("=agents",), ("agen*", "diffusion"), ("language agents",)],
)
def test_a_ranking_scores_a_match_as_the_analysed_paper_does(terms: tuple[str, ...]) -> None:
    ranking, expected = Ranking(CORPUS), rescore(Doc(BOTH, CORPUS), terms)
    assert ranking.rescore(BOTH, terms) == expected
    assert ranking.rescore(BOTH, terms) == expected  # again, from the weights it kept


def test_a_ranking_is_kept_while_the_statistics_are_the_same() -> None:
    ranking = Ranking(CORPUS)
    same = Stats(CORPUS.papers, Counter(CORPUS.df), CORPUS.title_length, CORPUS.abstract_length)
    grown = Stats(
        CORPUS.papers + 1, Counter(CORPUS.df), CORPUS.title_length, CORPUS.abstract_length
    )
    assert ranking.of(same) is ranking
    assert ranking.of(grown) is not ranking
    assert ranking.of(grown).stats is grown


def test_a_paper_without_subscription_terms_scores_nothing() -> None:
    m = Ranking(CORPUS).matched(BOTH, [], [])
    assert (m.subscriptions, m.terms, m.scores, m.score) == ((), (), (), 0.0)


def test_a_match_scored_against_statistics_of_as_many_papers_keeps_its_recorded_scores() -> None:
    m = Ranking(CORPUS).matched(
        BOTH,
        ["S"],
        [["agent", "diffusion"]],
        (9.0,),
        terms=("agent", "diffusion"),
        scored_papers=10,
    )
    assert (m.terms, m.scores) == (("agent", "diffusion"), (9.0,))


@pytest.mark.parametrize("scored_papers", [None, 9, 11])
def test_a_match_scored_against_other_statistics_is_weighed_again(
    scored_papers: int | None,
) -> None:
    ranking = Ranking(CORPUS)
    again = ranking.matched(BOTH, ["S"], [["agent", "diffusion"]])
    m = ranking.matched(
        BOTH,
        ["S"],
        [["agent", "diffusion"]],
        (9.0,),
        terms=("agent", "diffusion"),
        scored_papers=scored_papers,
    )
    assert (m.terms, m.scores) == (again.terms, again.scores) == (("diffusion", "agent"), m.scores)
    assert m.scores != (9.0,)
