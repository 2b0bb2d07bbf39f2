"""SentencePiece `tokenizer.model` -> a `tokenizers` Tokenizer that gives the slow Llama tokenizer's ids.

Original LLaVA repos (liuhaotian/llava-v1.5-7b, llava-v1.6-mistral-7b, ...) ship only tokenizer.model
and tokenizer_config.json. Their code reads them with transformers' slow LlamaTokenizer, whose
`legacy` flag decides one thing: whether text that follows a special token (`</s>`) starts a new word
(legacy=True: "▁USER") or continues (legacy=False: "USER"). The start of the text always gets the
word-start marker "▁".

The conversion reads the model with the `sentencepiece` protobuf: the vocabulary as is, and BPE merges
ranked by the score of the piece they produce (SentencePiece merges the highest-scoring pair first).
With legacy=True a normalizer adds "▁" to every segment between special tokens (what SentencePiece
does to each piece the slow tokenizer hands it); with legacy=False a Metaspace pre-tokenizer adds it to
the first segment only. One case needs the caller: the slow legacy=False tokenizer adds "▁" even when
the text already starts with a space; `slow_prefix` gives that text.
"""

from __future__ import annotations

import os
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

SPIECE_FILE = "tokenizer.model"
WORD_START = "▁"


def _read_model(path: str | os.PathLike) -> Any:
    """The parsed SentencePiece ModelProto (needs the `sentencepiece` package)."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        raise ImportError(f"reading {path} (a SentencePiece tokenizer.model) needs the `sentencepiece` package: "
                          "pip install sentencepiece") from None
    proto = sentencepiece_model_pb2.ModelProto()
    with open(path, "rb") as f:
        try:
            proto.ParseFromString(f.read())
        except Exception as err:  # protobuf's DecodeError
            raise ValueError(f"{path} is not a SentencePiece model: {err}") from None
    return proto


def _check_supported(proto: Any, path: str | os.PathLike) -> None:
    """Only Llama-style models convert exactly: BPE, byte fallback, no text normalization."""
    bpe = type(proto.trainer_spec).ModelType.Value("BPE")
    if proto.trainer_spec.model_type != bpe:
        kind = type(proto.trainer_spec).ModelType.Name(proto.trainer_spec.model_type)
        raise ValueError(f"{path} is a SentencePiece {kind} model; llavakit converts BPE models (Llama / Mistral "
                         "tokenizers) only. Provide a tokenizer.json instead")
    spec = proto.normalizer_spec
    if spec.name not in ("identity", "") or spec.precompiled_charsmap or spec.remove_extra_whitespaces:
        raise ValueError(f"{path} normalizes text (normalizer {spec.name!r}, remove_extra_whitespaces="
                         f"{spec.remove_extra_whitespaces}); llavakit converts SentencePiece models without "
                         "normalization (Llama / Mistral) only. Provide a tokenizer.json instead")


def bpe_vocab_and_merges(proto: Any) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(piece -> id, merges best first): every split of a piece into two known pieces is a merge, ranked by
    the merged piece's score, then by the ids of its left and right parts."""
    vocab = {piece.piece: index for index, piece in enumerate(proto.pieces)}
    normal = type(proto.pieces[0]).Type.Value("NORMAL")
    ranked = []
    for index, piece in enumerate(proto.pieces):
        if piece.type != normal or len(piece.piece) < 2:
            continue
        text = piece.piece
        for cut in range(1, len(text)):
            left, right = text[:cut], text[cut:]
            if left in vocab and right in vocab:
                ranked.append((-piece.score, index, vocab[left], vocab[right], left, right))
    ranked.sort()
    return vocab, [(left, right) for *_, left, right in ranked]


def special_pieces(proto: Any) -> list[str]:
    """The control and unknown pieces (<unk>, <s>, </s>): never split, never merged."""
    kinds = {type(proto.pieces[0]).Type.Value("CONTROL"), type(proto.pieces[0]).Type.Value("UNKNOWN")}
    return [piece.piece for piece in proto.pieces if piece.type in kinds]


def convert_sentencepiece(path: str | os.PathLike, *, legacy: bool = True) -> Tokenizer:
    """A tokenizers.Tokenizer giving transformers' slow LlamaTokenizer(path, legacy=legacy) tokens.

    `legacy` is tokenizer_config.json's flag (the slow tokenizer treats a missing one as True). BOS / EOS
    are not added here: PreTrainedTokenizerFast's add_bos_token / add_eos_token set the post-processor.
    """
    proto = _read_model(path)
    _check_supported(proto, path)
    vocab, merges = bpe_vocab_and_merges(proto)
    unk = proto.pieces[proto.trainer_spec.unk_id].piece
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=True,
                                     byte_fallback=proto.trainer_spec.byte_fallback))
    tokenizer.add_special_tokens([AddedToken(piece, special=True, normalized=False)
                                  for piece in special_pieces(proto)])
    prefix = proto.normalizer_spec.add_dummy_prefix
    if prefix and legacy:  # every segment between special tokens starts a word, as SentencePiece encodes it
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend(WORD_START),
                                                     normalizers.Replace(" ", WORD_START)])
    else:  # only the start of the text (see `encode_like_slow` for text starting with a space)
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_START, split=False,
                                                           prepend_scheme="first" if prefix else "never")
    steps = [decoders.Replace(WORD_START, " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(content=" ", left=1))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer



def slow_prefix(text: str, legacy: bool) -> str:
    """The text to encode so that a legacy=False conversion gives the slow tokenizer's ids for `text`.

    The slow tokenizer writes "▁" before every text; the Metaspace pre-tokenizer skips it when the text
    already starts with a space. legacy=True conversions need nothing (their normalizer always adds it).
    """
    if not legacy and text.startswith((" ", WORD_START)):
        return WORD_START + text
    return text
