"""Retrieval scores live in :mod:`mindeye.metrics.retrieval` (training validates with them too);
this name is kept so ``mindeye.evaluation.retrieval`` imports keep working."""

from mindeye.metrics.retrieval import *  # noqa: F403
from mindeye.metrics.retrieval import __all__  # noqa: F401
