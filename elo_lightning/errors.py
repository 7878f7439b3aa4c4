"""One exception type for bad user input, so the CLI can print a one-line error and exit 2."""


class ELOError(ValueError):
    """Invalid input detected before any work is done (bad layer index, missing shard, mismatch...)."""
