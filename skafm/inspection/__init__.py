"""Which feature interactions a fitted AFM model relies on."""

from ._display import InteractionDisplay
from ._explain import InteractionImportance, explain, interaction_importance

__all__ = [
    "InteractionDisplay",
    "InteractionImportance",
    "explain",
    "interaction_importance",
]
