"""Small helpers every layer may use (bottom layer, with ``mindeye.errors`` and ``mindeye.constants``)."""
