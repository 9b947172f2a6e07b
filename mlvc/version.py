"""The package version: one literal, read by setuptools (pyproject.toml) and recorded in ledger rows.

Its own module, at the bottom of the layers, so that a library module can name the version without
importing the package root (whose `Repo` attribute reaches the top of the library)."""

__version__ = "0.1.0"
