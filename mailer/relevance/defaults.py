"""The defaults of a 'more like these' subscription, apart from the scoring
code so that the command line can show them without loading numpy.

The least similarity a paper needs when a subscription sets none, and how
many papers one subscription brings to a digest: measured on the labelled
sample papers (bench/relevance.py, figures in bench/README.md).
"""

DEFAULT_THRESHOLD = 0.14
DEFAULT_TOP = 10
