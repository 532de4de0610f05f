"""Task families: seeded, verifiable synthetic problems shared by data preparation and evaluation."""

from components.families.synthetic import (
    MULTI_ANSWER_FAMILIES,
    SPLITS,
    SYNTHETIC_FAMILIES,
    Example,
    SyntheticFamily,
    get_family,
    has_unique_answer,
    split_of,
    to_messages,
)

__all__ = [
    "MULTI_ANSWER_FAMILIES",
    "SPLITS",
    "SYNTHETIC_FAMILIES",
    "Example",
    "SyntheticFamily",
    "get_family",
    "has_unique_answer",
    "split_of",
    "to_messages",
]
