"""Example apps bundled with simq (used by ``simq demo`` and the docs)."""
