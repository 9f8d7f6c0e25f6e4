"""Relevance beyond keywords: papers as vectors (``vectors``), 'more like
these' subscriptions (``likes``), and what readers tell us about papers.

Scoring is pure: vectors and profiles in, scores out; the store keeps the
corpus statistics the vectors are weighed with.
"""
