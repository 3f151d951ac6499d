"""A word-level tokenizer for small models trained from scratch.

Real recipes use the language model's own tokenizer (LLaMA, Vicuna, ...). Tiny models trained on ShapesWorld
need a vocabulary of a few hundred entries instead of 32k sentencepiece pieces, so this module builds one with
the `tokenizers` library from a word list, the coordinate tokens of the location codec and the template's special
tokens, and wraps it as a transformers fast tokenizer, so it is saved and loaded like any other.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"

# One pre-token per: an angle-bracket token (<12>, <p>, </p>, <delim>), a bracketed tag ([refer], [/INST]),
# a run of word characters, or any single other character (punctuation, braces).
_PIECE = Regex(r"<[^<>\s]*>|\[/?[A-Za-z_]+\]|\w+|[^\w\s]")
# Decoding joins the pieces with single spaces, then removes the spaces text is written without, so answers read
# as the published formats write them (MiniGPT-v2's `<p>large shapes</p> {<25><17><62><53>}<delim>{...}`,
# Kosmos-2's `</phrase><object><patch_index_0012>`) and as prose (`square? yes, it is`): none before a closing
# tag, bracket or punctuation mark, none after an opening one, none around `<delim>`, between two tags or
# in a decimal number (`0.125`, which the pre-tokenizer split in three).
_GLUE = Regex(r" (?=</p>|<delim>|[}\]),.;:?!])|(?<=<p>|<delim>|[{\[(]) |(?<=>) (?=<)|(?<=\d \.) (?=\d)")


def build_word_tokenizer(
    words: Iterable[str],
    *,
    tokens: Iterable[str] = (),
    special_tokens: Iterable[str] = (),
) -> PreTrainedTokenizerFast:
    """Build a lower-casing word-level fast tokenizer.

    `words` are ordinary vocabulary entries (lower-cased), `tokens` are further whole entries that the
    pre-tokenizer keeps in one piece (coordinate tokens such as `<42>`, `<p>`, `{`), and `special_tokens` are
    matched verbatim before any normalisation (template markers such as `<s>`, `[INST]`, `<image>`, `###`) and
    dropped by `decode(..., skip_special_tokens=True)`. Unknown words map to `<unk>`.
    """
    vocab: dict[str, int] = {}

    def add(entry: str) -> None:
        if entry and entry not in vocab:
            vocab[entry] = len(vocab)

    specials = [PAD, UNK, BOS, EOS, *special_tokens]
    for entry in specials:
        add(entry)
    for entry in tokens:
        add(entry)
    for word in words:
        add(word.lower())

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(_PIECE, behavior="isolated")]
    )
    tok.decoder = decoders.Sequence(
        [decoders.WordPiece(prefix="##", cleanup=False), decoders.Fuse(), decoders.Replace(_GLUE, "")]
    )
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in dict.fromkeys(specials)])

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        padding_side="left",
    )
