"""Stage "preference": modal-specific user preferences learned as a graph recommender."""

from pmg.preference.module import PreferenceModule
from pmg.preference.stage import (
    PREFERENCE_STAGE,
    PreferenceArtifacts,
    PreferenceConfig,
    PreferenceFeaturesConfig,
    PreferenceModelConfig,
    load_preferences,
)

__all__ = [
    "PREFERENCE_STAGE",
    "PreferenceArtifacts",
    "PreferenceConfig",
    "PreferenceFeaturesConfig",
    "PreferenceModelConfig",
    "PreferenceModule",
    "load_preferences",
]
