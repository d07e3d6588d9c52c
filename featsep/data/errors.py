"""Errors a user can cause in the data stage; each message names the cause and the fix."""

from __future__ import annotations


class DataError(ValueError):
    """Bad data input: unknown dataset spec, missing text column, empty corpus, bad arguments."""


class CacheError(DataError):
    """An activation cache is missing, incomplete, corrupted or built with other settings."""
