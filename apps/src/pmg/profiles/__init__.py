"""Packaged configuration profiles (YAML), usable without a checkout of the repository."""
