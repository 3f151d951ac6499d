"""Giving a model the tokens and head settings of its location codec.

Small models built from scratch (`train/build.py`) get the codec's tokens in their word-level vocabulary directly.
A pretrained language model keeps its tokenizer; `add_location_tokens` appends the codec's tokens to it and
grows the embedding table and lm_head with `resize_token_embeddings` (new rows start at the mean of the old
ones, as transformers' `mean_resizing` and NExT-Chat's `initialize_vision_tokenizer` do), so existing ids and
what the model learned stay as they were.
"""

from __future__ import annotations

from tokenizers import AddedToken
from transformers import PreTrainedTokenizerBase

from .codec import LocationCodec


def add_location_tokens(model, tokenizer: PreTrainedTokenizerBase, codec: LocationCodec) -> list[str]:
    """Add the codec's tokens the tokenizer lacks and resize `model`'s embeddings; returns the added tokens.

    The tokens are added as ordinary (not special) tokens so `decode(..., skip_special_tokens=True)` keeps
    them in the answer text the codec parses; `normalized=False` keeps them whole whatever the normaliser.
    """
    vocab = tokenizer.get_vocab()
    missing = [t for t in codec.added_tokens() if t not in vocab]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in missing])
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return missing


def location_head_settings(tokenizer, codec: LocationCodec, overrides: dict | None = None) -> dict | None:
    """The model config's `location_head` dict: the codec's token ids plus `overrides`, or None for a codec
    without location heads (overrides for such a codec are an error: they would be silently ignored)."""
    settings = codec.head_settings(tokenizer)
    if settings is None:
        if overrides:
            raise ValueError(f"location_head settings {sorted(overrides)} given, but this codec has no location heads")
        return None
    return {**settings, **(overrides or {})}


__all__ = ["add_location_tokens", "location_head_settings"]
