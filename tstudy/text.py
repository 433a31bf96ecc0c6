"""Small text helpers shared by the CLI, the executors and the report."""
from __future__ import annotations


def counted(count: int, word: str) -> str:
    """``1 run``, ``2 runs``: a count and a regular noun, plural unless the count is 1."""
    return f"{count} {word}{'' if count == 1 else 's'}"
