"""Registers every command module with the CLI app (imported for its side effects)."""

from __future__ import annotations
