"""Importers of published checkpoints into groundlm model directories: `IMPORTERS[kind](src, out, **options)`."""

from .nextchat import import_nextchat

IMPORTERS = {"nextchat": import_nextchat}

__all__ = ["IMPORTERS", "import_nextchat"]
