"""The package version, in a module of its own: the package and serialization (which records
it in every saved config) both import it, and neither imports the other for it."""

__version__ = "0.1.0"
