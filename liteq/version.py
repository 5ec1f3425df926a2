"""LiteQ's version: the one place it is written (pyproject.toml and the CLIs read it here).

A module of its own, so that the daemon's modules can name the version without
importing the liteq package's facade (which lazily reaches the scheduler loop)."""

__version__ = "0.4.0"
