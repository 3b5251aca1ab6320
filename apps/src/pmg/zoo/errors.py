"""The zoo's error, in a module of its own: the manifest (``zoo.json``) and the loaders (the
model folders) both raise it, and only the manifest imports the loaders, when a model is loaded."""

from __future__ import annotations

from pmg.runs import RunError

__all__ = ["ZooError"]


class ZooError(RunError):
    """A zoo manifest, cache folder or model that is missing or damaged."""
