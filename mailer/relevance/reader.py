"""A model per reader, learned from their feedback marks."""

from __future__ import annotations

#: "More like this" marks a reader needs before a model is trained for them.
MIN_POSITIVES = 3
