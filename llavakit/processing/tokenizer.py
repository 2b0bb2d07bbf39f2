"""PreTrainedTokenizerFast / AutoTokenizer: a `tokenizers` tokenizer.json plus the transformers tokenizer API.

tokenizer.json is the truth for the pipeline (normalizer, pre-tokenizer, BPE model, post-processor).
tokenizer_config.json adds the special tokens, padding side, max length and chat template, read with
transformers 5's rules (for example: with a tokenizer.json present, its add_bos_token is ignored).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings
from typing import Any, Iterable

import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors

from llavakit.loading.hub import read_json, resolve_file
from llavakit.processing import chat_template as chat
from llavakit.processing.batch import BatchEncoding
from llavakit.processing.sentencepiece import SPIECE_FILE, convert_sentencepiece

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "chat_templates"

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
LARGE_INTEGER = int(1e20)  # a model_max_length above this means "no limit" (transformers' sentinel is 1e30)
VERY_LARGE_INTEGER = int(1e30)
_PADDING = {False: "do_not_pad", None: "do_not_pad", "do_not_pad": "do_not_pad", True: "longest",
            "longest": "longest", "max_length": "max_length"}
_TRUNCATION = {False: "do_not_truncate", None: "do_not_truncate", "do_not_truncate": "do_not_truncate",
               True: "longest_first", "longest_first": "longest_first", "only_first": "only_first",
               "only_second": "only_second"}
_ENCODE_EXTRAS = ("return_token_type_ids", "return_special_tokens_mask", "return_offsets_mapping", "return_length",
                  "pad_to_multiple_of", "stride", "verbose", "split_special_tokens", "is_split_into_words")
# Config keys that describe the load, not the tokenizer; never written back.
_RUNTIME_KEYS = ("name_or_path", "is_local", "local_files_only", "files_loaded", "tokenizer_file", "vocab_file",
                 "added_tokens_decoder", "chat_template", "special_tokens_map_file", "init_inputs", "auto_map")


def _token_content(value: Any) -> str:
    if isinstance(value, AddedToken):
        return value.content
    if isinstance(value, dict):
        return value["content"]
    return str(value)


def _as_added_token(value: Any, special: bool = True) -> AddedToken:
    """str / AddedToken / serialized dict ({"content": ..., "lstrip": ...}) -> AddedToken."""
    if isinstance(value, AddedToken):
        return value
    if isinstance(value, dict):
        props = {k: v for k, v in value.items() if k in ("content", "single_word", "lstrip", "rstrip", "normalized",
                                                          "special")}
        props.setdefault("special", special)
        return AddedToken(**props)
    return AddedToken(str(value), special=special, normalized=False)


def _to_python_ids(ids: Any) -> Any:
    if isinstance(ids, torch.Tensor):
        return ids.detach().cpu().tolist()
    if isinstance(ids, np.ndarray):
        return ids.tolist()
    if isinstance(ids, (np.integer,)):
        return int(ids)
    if isinstance(ids, (list, tuple)):
        return [_to_python_ids(x) for x in ids]
    return ids


class PreTrainedTokenizerFast:
    """A fast tokenizer with transformers' API: call, encode, decode, special tokens, padding, chat templates."""

    padding_side: str = "right"
    truncation_side: str = "right"
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, tokenizer_object: Tokenizer | None = None, *, tokenizer_file: str | None = None,
                 extra_special_tokens: list | dict | None = None, additional_special_tokens: list | None = None,
                 added_tokens_decoder: dict | None = None, add_bos_token: bool | None = None,
                 add_eos_token: bool | None = None, padding_side: str | None = None,
                 truncation_side: str | None = None, model_max_length: int | None = None,
                 clean_up_tokenization_spaces: bool = False, chat_template: str | dict | list | None = None,
                 split_special_tokens: bool = False, model_input_names: list[str] | None = None,
                 name_or_path: str = "", **kwargs: Any):
        if tokenizer_object is None:
            if tokenizer_file is None or not os.path.isfile(tokenizer_file):
                raise ValueError("PreTrainedTokenizerFast needs a tokenizers.Tokenizer or the path of a tokenizer.json")
            tokenizer_object = Tokenizer.from_file(tokenizer_file)
        self._tokenizer = tokenizer_object
        self._tokenizer.no_padding()  # padding and truncation are set per call, from the call's arguments
        self._tokenizer.no_truncation()
        self._lock = threading.Lock()
        self.name_or_path = str(name_or_path)

        # Named special tokens (bos/eos/... plus model-specific ones such as `image_token`), then extras.
        self._special: dict[str, str | None] = dict.fromkeys(SPECIAL_TOKEN_NAMES)
        named_values: dict[str, Any] = {}
        for key in list(kwargs):
            value = kwargs[key]
            if key in SPECIAL_TOKEN_NAMES or (key.endswith("_token") and isinstance(value, (str, AddedToken, dict))
                                               and (not isinstance(value, dict) or "content" in value)):
                kwargs.pop(key)
                if value is not None:
                    named_values[key] = value
        if extra_special_tokens is None:
            extra_special_tokens = additional_special_tokens
        if isinstance(extra_special_tokens, dict):
            named_values.update(extra_special_tokens)
            extra_special_tokens = None
        for key, value in named_values.items():
            self._special[key] = _token_content(value)
        self._extra: list[str] = [_token_content(t) for t in (extra_special_tokens or [])]

        # Added tokens from tokenizer_config.json are (re-)applied with their properties, then any special
        # token the backend does not know yet as an added token is added as a special one.
        to_add = [_as_added_token(t) for _, t in sorted((added_tokens_decoder or {}).items(), key=lambda x: int(x[0]))]
        known = {t.content for t in self._tokenizer.get_added_tokens_decoder().values()} | {t.content for t in to_add}
        for value in list(named_values.values()) + list(extra_special_tokens or []):
            if _token_content(value) not in known:
                to_add.append(_as_added_token(value))
                known.add(_token_content(value))
        if to_add:
            self._tokenizer.add_tokens(to_add)
        if add_bos_token is not None or add_eos_token is not None:
            self._set_post_processor(bool(add_bos_token), bool(add_eos_token))

        self.padding_side = padding_side or type(self).padding_side
        self.truncation_side = truncation_side or type(self).truncation_side
        self.model_max_length = int(model_max_length) if model_max_length is not None else VERY_LARGE_INTEGER
        self.model_input_names = list(model_input_names or type(self).model_input_names)
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output = bool(
            kwargs.pop("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False))
        self.split_special_tokens = bool(split_special_tokens)
        if isinstance(chat_template, (list, tuple)):  # [{"name": ..., "template": ...}, ...]
            chat_template = {t["name"]: t["template"] for t in chat_template}
        self.chat_template = chat_template
        self.init_kwargs = kwargs  # the remaining tokenizer_config.json keys, written back by save_pretrained

    # ---- special tokens ---------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # bos_token / bos_token_id / image_token / image_token_id ... for every named special token
        special = self.__dict__.get("_special")
        if special is not None:
            base = name.removesuffix("_id")
            if base in special:
                token = special[base]
                if name.endswith("_id"):
                    return None if token is None else self.convert_tokens_to_ids(token)
                return token
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        special = self.__dict__.get("_special")
        base = name.removesuffix("_id")
        if special is not None and (base in special or base in SPECIAL_TOKEN_NAMES):
            if name.endswith("_id") and value is not None:
                value = self.convert_ids_to_tokens(int(value))
            if value is not None and not isinstance(value, (str, AddedToken)):
                raise ValueError(f"{base} must be a string (or AddedToken), got {type(value).__name__}")
            special[base] = None if value is None else _token_content(value)
            return
        if name == "padding_side" or name == "truncation_side":
            if value not in ("left", "right"):
                raise ValueError(f"{name} must be 'left' or 'right', got {value!r}")
        super().__setattr__(name, value)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """Named special tokens that are set, e.g. {'bos_token': '<s>', ...} (extras not included)."""
        return {k: v for k, v in self._special.items() if v is not None}

    @property
    def extra_special_tokens(self) -> list[str]:
        return list(self._extra)

    @property
    def additional_special_tokens(self) -> list[str]:
        return list(self._extra)

    @property
    def all_special_tokens(self) -> list[str]:
        """Named special tokens then the extra ones, each once."""
        out: list[str] = []
        for token in list(self.special_tokens_map.values()) + self._extra:
            if token not in out:
                out.append(token)
        return out

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    @property
    def add_bos_token(self) -> bool:
        """Whether encoding with special tokens starts with BOS (read from the post-processor)."""
        ids = self._tokenizer.encode("", add_special_tokens=True).ids
        return bool(ids) and self.bos_token_id is not None and ids[0] == self.bos_token_id

    @add_bos_token.setter
    def add_bos_token(self, value: bool) -> None:
        self._set_post_processor(bool(value), self.add_eos_token)

    @property
    def add_eos_token(self) -> bool:
        ids = self._tokenizer.encode("", add_special_tokens=True).ids
        return bool(ids) and self.eos_token_id is not None and ids[-1] == self.eos_token_id

    @add_eos_token.setter
    def add_eos_token(self, value: bool) -> None:
        self._set_post_processor(self.add_bos_token, bool(value))

    def _set_post_processor(self, add_bos: bool, add_eos: bool) -> None:
        """Rebuild the post-processor as `[BOS] $A [EOS]` (pairs: `[BOS] $A [EOS] [BOS] $B [EOS]`)."""
        bos, eos = self._special.get("bos_token"), self._special.get("eos_token")
        add_bos, add_eos = add_bos and bos is not None, add_eos and eos is not None
        single = f"{bos + ':0 ' if add_bos else ''}$A:0{' ' + eos + ':0' if add_eos else ''}"
        pair = f"{single}{' ' + bos + ':1' if add_bos else ''} $B:1{' ' + eos + ':1' if add_eos else ''}"
        special = ([(bos, self.convert_tokens_to_ids(bos))] if add_bos else []) + \
                  ([(eos, self.convert_tokens_to_ids(eos))] if add_eos else [])
        self._tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                                       special_tokens=special)

    def add_tokens(self, new_tokens: str | AddedToken | Iterable[str | AddedToken],
                   special_tokens: bool = False) -> int:
        """Add tokens to the vocabulary (ids after the current ones); returns how many were new."""
        if not new_tokens:
            return 0
        if isinstance(new_tokens, (str, AddedToken)):
            new_tokens = [new_tokens]
        new_tokens = list(new_tokens)
        if special_tokens:
            return self._tokenizer.add_special_tokens(new_tokens)
        return self._tokenizer.add_tokens(new_tokens)

    def add_special_tokens(self, special_tokens_dict: dict[str, Any],
                           replace_extra_special_tokens: bool = True) -> int:
        """Set named special tokens (e.g. {'pad_token': '<pad>'}) and add them to the vocabulary if new."""
        tokens: list[AddedToken] = []
        for key, value in dict(special_tokens_dict).items():
            if key == "additional_special_tokens":
                key = "extra_special_tokens"
            if key == "extra_special_tokens":
                if not isinstance(value, (list, tuple)) or not all(isinstance(t, (str, AddedToken)) for t in value):
                    raise ValueError(f"extra_special_tokens must be a list of strings, got {value!r}")
                added = [AddedToken(t, normalized=False, special=True) if isinstance(t, str) else t for t in value]
                contents = [t.content for t in added]
                self._extra = contents if replace_extra_special_tokens else \
                    self._extra + [c for c in contents if c not in self._extra]
                tokens.extend(added)
            elif key in SPECIAL_TOKEN_NAMES:
                if not isinstance(value, (str, AddedToken)):
                    raise ValueError(f"{key} must be a string or AddedToken, got {type(value).__name__}")
                token = AddedToken(value, normalized=False, special=True) if isinstance(value, str) else value
                self._special[key] = token.content
                tokens.append(token)
            else:
                raise ValueError(f"{key!r} is not a special token name; use one of "
                                 f"{list(SPECIAL_TOKEN_NAMES) + ['extra_special_tokens']}")
        return self.add_tokens(tokens, special_tokens=True)

    # ---- vocabulary -------------------------------------------------------------------------------
    @property
    def backend_tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary, without added tokens."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        return self._tokenizer.get_added_tokens_decoder()

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        return {t.content: i for i, t in sorted(self.added_tokens_decoder.items())}

    def get_added_vocab(self) -> dict[str, int]:
        return self.added_tokens_encoder

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        """Token string(s) -> id(s); unknown tokens map to the unk id (None without an unk token)."""
        if isinstance(tokens, str):
            index = self._tokenizer.token_to_id(tokens)
            if index is None:
                unk = self._special.get("unk_token")
                return None if unk is None else self._tokenizer.token_to_id(unk)
            return index
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | list[int], skip_special_tokens: bool = False) -> str | list[str]:
        ids = _to_python_ids(ids)
        if isinstance(ids, int):
            return self._tokenizer.id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tokenizer.id_to_token(int(i)) for i in ids if int(i) not in skip]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        decoder = self._tokenizer.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self._tokenizer.num_special_tokens_to_add(pair)

    # ---- special-token layout (the slow tokenizers' methods, read off the post-processor) ----------
    def _special_layout(self, pair: bool) -> list[tuple[int | None, int | None, int]]:
        """The post-processor's template as (special token id, None, type id) and (None, sequence index, type id)
        entries, e.g. Llama's pair template `<s> A <s> B` (or `<s> A </s> <s> B </s>` with add_eos_token)."""
        marker = ["a"]  # any word: only where the sequence lands matters
        encoding = self._tokenizer.encode(marker, marker if pair else None, is_pretokenized=True,
                                          add_special_tokens=True)
        layout: list[tuple[int | None, int | None, int]] = []
        for token_id, sequence, type_id in zip(encoding.ids, encoding.sequence_ids, encoding.type_ids):
            if sequence is None:
                layout.append((token_id, None, type_id))
            elif not layout or layout[-1][1] != sequence:
                layout.append((None, sequence, type_id))
        return layout

    def _apply_layout(self, token_ids_0: list[int], token_ids_1: list[int] | None,
                      special: Any, sequence: Any) -> list[int]:
        """Walk the template: `special(id, type_id)` gives a special slot's values, `sequence(ids, type_id)`
        a sequence's."""
        sequences = [list(token_ids_0), list(token_ids_1 or [])]
        out: list[int] = []
        for token_id, index, type_id in self._special_layout(token_ids_1 is not None):
            out.extend(special(token_id, type_id) if index is None else sequence(sequences[index], type_id))
        return out

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None
                                         ) -> list[int]:
        """Ids with the special tokens added as encoding adds them (Llama: `<s> A`, pairs `<s> A <s> B`)."""
        return self._apply_layout(token_ids_0, token_ids_1, lambda i, _: [i], lambda ids, _: ids)

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
        """1 for special tokens, 0 for sequence tokens: of `build_inputs_with_special_tokens(...)`'s output, or,
        with already_has_special_tokens=True, of `token_ids_0` itself (any special token's id counts)."""
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError("You should not supply a second sequence if the provided sequence of ids is "
                                 "already formatted with special tokens for the model.")
            special_ids = set(self.all_special_ids)
            return [1 if int(i) in special_ids else 0 for i in token_ids_0]
        return self._apply_layout(token_ids_0, token_ids_1, lambda i, _: [1], lambda ids, _: [0] * len(ids))

    def create_token_type_ids_from_sequences(self, token_ids_0: list[int], token_ids_1: list[int] | None = None
                                             ) -> list[int]:
        """Type ids of `build_inputs_with_special_tokens(...)`'s output (Llama: 0 for the first sequence and its
        specials, 1 for the second's)."""
        return self._apply_layout(token_ids_0, token_ids_1, lambda _, t: [t], lambda ids, t: [t] * len(ids))

    def save_vocabulary(self, save_directory: str | os.PathLike, filename_prefix: str | None = None) -> tuple[str]:
        """Write the vocabulary file, which for a fast tokenizer is tokenizer.json; returns its path."""
        if not os.path.isdir(save_directory):
            raise ValueError(f"Vocabulary path ({os.fspath(save_directory)}) should be an existing directory")
        path = os.path.join(save_directory, (f"{filename_prefix}-" if filename_prefix else "") + TOKENIZER_FILE)
        self._tokenizer.save(path)
        return (path,)

    # ---- encoding ---------------------------------------------------------------------------------
    def _strategies(self, padding: Any, truncation: Any, max_length: int | None,
                    pad_to_multiple_of: int | None) -> tuple[str, str, int | None]:
        """Resolve padding/truncation flags into strategies the way transformers does."""
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"  # a bare max_length means "truncate to it"
        if padding not in _PADDING:
            raise ValueError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")
        if truncation not in _TRUNCATION:
            raise ValueError(f"truncation must be True, False, 'longest_first', 'only_first', 'only_second' or "
                             f"'do_not_truncate', got {truncation!r}")
        pad, trunc = _PADDING[padding], _TRUNCATION[truncation]
        if max_length is None:
            limited = self.model_max_length <= LARGE_INTEGER
            if pad == "max_length":
                pad, max_length = ("max_length", self.model_max_length) if limited else ("do_not_pad", None)
            if trunc != "do_not_truncate":
                trunc, max_length = (trunc, self.model_max_length) if limited else ("do_not_truncate", max_length)
        elif not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        if pad != "do_not_pad" and (self.pad_token is None or self.pad_token_id is None):
            raise ValueError("asked to pad but the tokenizer has no pad token: set one, e.g. "
                             "tokenizer.pad_token = tokenizer.eos_token, or add_special_tokens({'pad_token': '<pad>'})")
        if trunc != "do_not_truncate" and pad != "do_not_pad" and pad_to_multiple_of and max_length is not None \
                and max_length % pad_to_multiple_of:
            raise ValueError(f"truncation length {max_length} is not a multiple of pad_to_multiple_of "
                             f"{pad_to_multiple_of}")
        return pad, trunc, max_length

    def __call__(self, text: str | list[str] | list[list[str]] | None = None,
                 text_pair: str | list[str] | None = None, *, add_special_tokens: bool = True,
                 padding: bool | str = False, truncation: bool | str | None = None, max_length: int | None = None,
                 return_tensors: str | None = None, padding_side: str | None = None,
                 return_attention_mask: bool | None = None, **kwargs: Any) -> BatchEncoding:
        """Tokenize one text or a batch -> BatchEncoding(input_ids, attention_mask)."""
        unknown = set(kwargs) - set(_ENCODE_EXTRAS)
        if unknown:
            raise TypeError(f"unexpected tokenizer arguments {sorted(unknown)}")
        if text is None:
            raise ValueError("text is required (a string or a list of strings)")
        return self._encode(text, text_pair, add_special_tokens=add_special_tokens, padding=padding,
                            truncation=truncation, max_length=max_length, return_tensors=return_tensors,
                            padding_side=padding_side, return_attention_mask=return_attention_mask, **kwargs)

    def _encode(self, text: Any, text_pair: Any, *, add_special_tokens: bool, padding: Any, truncation: Any,
                max_length: int | None, return_tensors: str | None, padding_side: str | None,
                return_attention_mask: bool | None, return_token_type_ids: bool | None = None,
                return_special_tokens_mask: bool = False, return_offsets_mapping: bool = False,
                return_length: bool = False, pad_to_multiple_of: int | None = None, stride: int = 0,
                verbose: bool = True, split_special_tokens: bool | None = None,
                is_split_into_words: bool = False) -> BatchEncoding:
        pretokenized = is_split_into_words
        batched = isinstance(text, (list, tuple)) and (not pretokenized or (len(text) > 0 and
                                                                             isinstance(text[0], (list, tuple))))
        texts = list(text) if batched else [text]
        unit = (list, tuple) if pretokenized else str
        if not all(isinstance(t, unit) for t in texts):
            kinds = sorted({type(t).__name__ for t in texts})
            raise ValueError("text must be a string or a list of strings (lists of words with is_split_into_words=True)"
                             f"; got {'a list of ' if batched else ''}{', '.join(kinds)}")
        if text_pair is not None:
            pairs = list(text_pair) if batched else [text_pair]
            if batched and isinstance(text_pair, str):
                raise TypeError("for a batch of texts, text_pair must be a list of the same length")
            if len(pairs) != len(texts):
                raise ValueError(f"text has {len(texts)} entries but text_pair has {len(pairs)}")
            inputs: list = list(zip(texts, pairs))
        else:
            inputs = texts
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        pad, trunc, max_length = self._strategies(padding, truncation, max_length, pad_to_multiple_of)
        split = self.split_special_tokens if split_special_tokens is None else split_special_tokens

        with self._lock:
            backend = self._tokenizer
            try:
                if trunc != "do_not_truncate":
                    backend.enable_truncation(max_length, stride=stride, strategy=trunc, direction=self.truncation_side)
                if pad != "do_not_pad":
                    backend.enable_padding(length=max_length if pad == "max_length" else None, direction=side,
                                           pad_id=self.pad_token_id, pad_token=self.pad_token, pad_type_id=0,
                                           pad_to_multiple_of=pad_to_multiple_of)
                backend.encode_special_tokens = split
                encodings = backend.encode_batch(inputs, add_special_tokens=add_special_tokens,
                                                 is_pretokenized=pretokenized)
            except Exception as err:  # the Rust side reports e.g. truncation errors as plain Exceptions
                raise ValueError(f"tokenization failed: {err}") from err
            finally:
                backend.no_truncation()
                backend.no_padding()
                backend.encode_special_tokens = False

        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        data: dict[str, Any] = {"input_ids": [e.ids for e in encodings]}
        if return_token_type_ids:
            data["token_type_ids"] = [e.type_ids for e in encodings]
        if return_attention_mask:
            data["attention_mask"] = [e.attention_mask for e in encodings]
        if return_special_tokens_mask:
            data["special_tokens_mask"] = [e.special_tokens_mask for e in encodings]
        if return_offsets_mapping:
            data["offset_mapping"] = [e.offsets for e in encodings]
        if return_length:
            data["length"] = [len(e.ids) for e in encodings]
        if not batched and return_tensors is None:
            data = {k: v[0] for k, v in data.items()}
        return BatchEncoding(data, encodings=encodings, tensor_type=return_tensors)

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True,
               padding: bool | str = False, truncation: bool | str | None = None, max_length: int | None = None,
               return_tensors: str | None = None, **kwargs: Any) -> list[int] | Any:
        """Text -> token ids (a list, or a (1, T) tensor with return_tensors)."""
        return self(text, text_pair, add_special_tokens=add_special_tokens, padding=padding, truncation=truncation,
                    max_length=max_length, return_tensors=return_tensors, **kwargs)["input_ids"]

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False,
                 **kwargs: Any) -> list[str]:
        """Text -> token strings."""
        return self(text, pair, add_special_tokens=add_special_tokens, **kwargs).encodings[0].tokens

    # ---- decoding ---------------------------------------------------------------------------------
    def decode(self, token_ids: Any, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None, **kwargs: Any) -> str | list[str]:
        """Ids -> text; a batch (2-D) gives a list of texts."""
        if isinstance(token_ids, dict):
            token_ids = token_ids["input_ids"]
        ids = _to_python_ids(token_ids)
        if isinstance(ids, int):
            ids = [ids]
        if isinstance(ids, list) and ids and isinstance(ids[0], list):
            return [self._decode_one(row, skip_special_tokens, clean_up_tokenization_spaces) for row in ids]
        return self._decode_one(ids, skip_special_tokens, clean_up_tokenization_spaces)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None, **kwargs: Any) -> list[str]:
        """A batch of id sequences -> texts; an empty batch gives [] (transformers 5.24+)."""
        if len(sequences) == 0:
            return []
        out = self.decode(sequences, skip_special_tokens=skip_special_tokens,
                          clean_up_tokenization_spaces=clean_up_tokenization_spaces)
        if isinstance(out, str):
            warnings.warn("Passing a single sequence to `batch_decode` is deprecated (transformers 5.24): use "
                          "`decode` instead.", FutureWarning, stacklevel=2)
            return [out]
        return out

    def _decode_one(self, ids: list, skip_special_tokens: bool, clean_up: bool | None) -> str:
        if not all(isinstance(i, int) for i in ids):
            raise TypeError(f"token ids must be ints, got {sorted({type(i).__name__ for i in ids})}")
        negative = [i for i in ids if i < 0]
        if negative:  # ids past the vocabulary decode to nothing, as in transformers; negative ones cannot
            raise ValueError(f"cannot decode negative token ids {negative[:5]} (ignore-index labels such as -100 "
                             "must be replaced by a real id, e.g. the pad id, first)")
        text = self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        clean_up = self.clean_up_tokenization_spaces if clean_up is None else clean_up
        if clean_up:
            # Like transformers 5: the clean-up was made for WordPiece and corrupts BPE text, so BPE skips it.
            if type(self._tokenizer.model).__name__ != "BPE" or \
                    self.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output:
                text = clean_up_tokenization(text)
        return text

    # ---- chat templates ---------------------------------------------------------------------------
    def get_chat_template(self, chat_template: str | None = None, tools: list | None = None) -> str:
        """The template to render: a name from the tokenizer's dict, the given template, or the default."""
        from llavakit.processing.templates import TEMPLATES

        if isinstance(self.chat_template, dict):
            if chat_template is not None and chat_template in self.chat_template:
                return self.chat_template[chat_template]
            if chat_template is None:
                if tools is not None and "tool_use" in self.chat_template:
                    return self.chat_template["tool_use"]
                if "default" in self.chat_template:
                    return self.chat_template["default"]
                raise ValueError("this tokenizer has several chat templates and none is 'default'; pass "
                                 f"chat_template= one of {sorted(self.chat_template)}")
        if chat_template is not None:
            return TEMPLATES.get(chat_template, chat_template)
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template: pass chat_template= a Jinja template or a built-in "
                             f"name ({sorted(TEMPLATES)})")
        return self.chat_template

    def apply_chat_template(self, conversation: list, tools: list[dict] | None = None,
                            documents: list[dict] | None = None, chat_template: str | None = None,
                            add_generation_prompt: bool = False, continue_final_message: bool | str = False,
                            tokenize: bool = True, padding: bool | str = False, truncation: bool = False,
                            max_length: int | None = None, return_tensors: str | None = None,
                            return_dict: bool = True, return_assistant_tokens_mask: bool = False,
                            tokenizer_kwargs: dict | None = None, **kwargs: Any) -> Any:
        """Render messages with the chat template; with tokenize=True return ids (or the BatchEncoding)."""
        if not tokenize:
            return_dict = False
        if return_assistant_tokens_mask and not (tokenize and return_dict):
            raise ValueError("return_assistant_tokens_mask=True needs tokenize=True and return_dict=True")
        if return_assistant_tokens_mask and continue_final_message:
            raise ValueError("continue_final_message cannot be combined with return_assistant_tokens_mask")
        template = self.get_chat_template(chat_template, tools)
        conversations, batched = chat.split_conversations(conversation)
        texts, spans = chat.render(template, conversations, add_generation_prompt=add_generation_prompt,
                                   continue_final_message=continue_final_message, tools=tools, documents=documents,
                                   track_generation=return_assistant_tokens_mask,
                                   **{**self.special_tokens_map, **kwargs})
        if not tokenize:
            return texts if batched else texts[0]
        out = self(texts if batched else texts[0], add_special_tokens=False, padding=padding, truncation=truncation,
                   max_length=max_length, return_tensors=return_tensors, **(tokenizer_kwargs or {}))
        if not return_dict:
            return out["input_ids"]
        if return_assistant_tokens_mask:
            masks = [chat.token_mask_from_spans(e.offsets, s) for e, s in zip(out.encodings, spans)]
            out["assistant_masks"] = masks if batched or return_tensors else masks[0]
            out.convert_to_tensors(return_tensors)
        return out

    # ---- loading and saving -----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, *, revision: str | None = None,
                        local_files_only: bool = False, cache_dir: str | None = None, token: str | bool | None = None,
                        subfolder: str | None = None, force_download: bool = False,
                        **kwargs: Any) -> "PreTrainedTokenizerFast":
        """Load tokenizer.json + tokenizer_config.json (+ special_tokens_map.json, chat_template.jinja)."""
        hub = dict(revision=revision, local_files_only=local_files_only, cache_dir=cache_dir, token=token,
                   subfolder=subfolder, force_download=force_download)
        return cls(**load_tokenizer_kwargs(path_or_repo_id, hub, kwargs))

    def save_pretrained(self, save_directory: str | os.PathLike, filename_prefix: str | None = None) -> tuple[str, ...]:
        """Write tokenizer.json, tokenizer_config.json and the chat template(s); returns the paths."""
        os.makedirs(save_directory, exist_ok=True)
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        tokenizer_path = os.path.join(save_directory, prefix + TOKENIZER_FILE)
        self._tokenizer.save(tokenizer_path)
        config = {k: v for k, v in self.init_kwargs.items() if k not in _RUNTIME_KEYS}
        config.update({k: v for k, v in self.special_tokens_map.items()})
        if self._extra:
            config["extra_special_tokens"] = list(self._extra)
        config.update({
            "model_max_length": self.model_max_length, "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
        })
        config.setdefault("tokenizer_class", self._saved_class_name())
        config_path = os.path.join(save_directory, prefix + TOKENIZER_CONFIG_FILE)
        with open(config_path, "w", encoding="utf-8") as f:
            f.write(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        return (tokenizer_path, config_path, *save_chat_templates(self.chat_template, save_directory))

    def _saved_class_name(self) -> str:
        return "PreTrainedTokenizerFast"

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
                f"len={len(self)}, padding_side={self.padding_side!r}, special_tokens={self.special_tokens_map})")


class LlamaTokenizerFast(PreTrainedTokenizerFast):
    """The SentencePiece-style Llama tokenizer: pads on the left by default, and (like transformers 5's
    LlamaTokenizer) rebuilds the pre-tokenizer and decoder from `legacy` / `add_prefix_space`."""

    padding_side = "left"

    def __init__(self, tokenizer_object: Tokenizer | None = None, *, legacy: bool | None = None,
                 add_prefix_space: bool | None = None, **kwargs: Any):
        super().__init__(tokenizer_object, **kwargs)
        self.init_kwargs.update({k: v for k, v in (("legacy", legacy), ("add_prefix_space", add_prefix_space))
                                 if v is not None})
        model = self._tokenizer.model
        if type(model).__name__ == "BPE" and getattr(model, "byte_fallback", False):
            prefix = True if add_prefix_space is None else bool(add_prefix_space)
            scheme = ("first" if not legacy else "always") if prefix else "never"
            self._tokenizer.normalizer = None
            self._tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme,
                                                                     split=False)
            steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
            if prefix:
                steps.append(decoders.Strip(content=" ", left=1))
            self._tokenizer.decoder = decoders.Sequence(steps)

    def _saved_class_name(self) -> str:
        return "LlamaTokenizer"


def clean_up_tokenization(text: str) -> str:
    """Remove spaces before punctuation and contractions (the WordPiece-era clean-up)."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


def save_chat_templates(template: str | dict | None, save_directory: str | os.PathLike) -> list[str]:
    """A single template -> chat_template.jinja; a dict -> 'default' there, others in chat_templates/<name>.jinja."""
    if template is None:
        return []
    templates = template if isinstance(template, dict) else {"default": template}
    paths = []
    for name, text in templates.items():
        if name == "default":
            path = os.path.join(save_directory, CHAT_TEMPLATE_FILE)
        else:
            if not name or "/" in name or "\\" in name or name.startswith("."):
                raise ValueError(f"invalid chat template name {name!r}")
            os.makedirs(os.path.join(save_directory, CHAT_TEMPLATE_DIR), exist_ok=True)
            path = os.path.join(save_directory, CHAT_TEMPLATE_DIR, f"{name}.jinja")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        paths.append(path)
    return paths


def read_chat_templates(path_or_repo_id: str | os.PathLike, hub: dict[str, Any]) -> dict[str, str]:
    """chat_template.jinja ('default') plus chat_templates/*.jinja of a local folder."""
    templates: dict[str, str] = {}
    folder = os.path.join(os.fspath(path_or_repo_id), hub.get("subfolder") or "", CHAT_TEMPLATE_DIR)
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".jinja"):
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    templates[name.removesuffix(".jinja")] = f.read()
    path = resolve_file(path_or_repo_id, CHAT_TEMPLATE_FILE, required=False, **hub)
    if path is not None:
        with open(path, encoding="utf-8") as f:
            templates["default"] = f.read()
    return templates


def drop_transformers_only_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove loading arguments that mean nothing here (llavakit always uses the fast tokenizer and never
    runs code from a checkpoint), so `from_pretrained(..., use_fast=True)` works as in transformers."""
    for key in ("use_fast", "trust_remote_code", "_from_auto", "_from_pipeline", "proxies", "code_revision"):
        kwargs.pop(key, None)
    return kwargs


def load_tokenizer_kwargs(path_or_repo_id: str | os.PathLike, hub: dict[str, Any],
                          overrides: dict[str, Any]) -> dict[str, Any]:
    """The constructor kwargs from a checkpoint's tokenizer files, following transformers 5's precedence."""
    overrides = drop_transformers_only_kwargs(dict(overrides))
    tokenizer_file = resolve_file(path_or_repo_id, TOKENIZER_FILE, required=False, **hub)
    spiece_file = None if tokenizer_file is not None else resolve_file(path_or_repo_id, SPIECE_FILE, required=False,
                                                                          **hub)
    if tokenizer_file is None and spiece_file is None:
        raise FileNotFoundError(f"neither {TOKENIZER_FILE} nor {SPIECE_FILE} (SentencePiece) found in "
                                f"{os.fspath(path_or_repo_id)}")
    config_file = resolve_file(path_or_repo_id, TOKENIZER_CONFIG_FILE, required=False, **hub)
    config = read_json(config_file) if config_file is not None else {}
    config.pop("init_inputs", None)
    if spiece_file is not None:
        # the slow LlamaTokenizer's reading: legacy defaults to True, BOS on and EOS off unless configured
        config["legacy"] = bool(overrides.get("legacy", config.get("legacy", True)))
        config.setdefault("add_bos_token", True)
        config.setdefault("add_eos_token", False)
        config["tokenizer_object"] = convert_sentencepiece(spiece_file, legacy=config["legacy"])
    else:
        # transformers 5: with a tokenizer.json, its post-processor decides BOS/EOS, not tokenizer_config.json
        config.pop("add_bos_token", None)
        config.pop("add_eos_token", None)
    templates = read_chat_templates(path_or_repo_id, hub)
    if templates:  # template files win over a template inside tokenizer_config.json
        config["chat_template"] = templates["default"] if list(templates) == ["default"] else templates
    config.update(overrides)
    if "additional_special_tokens" in config and not config.get("extra_special_tokens"):
        config["extra_special_tokens"] = config.pop("additional_special_tokens")
    config.pop("additional_special_tokens", None)
    for key, value in list(config.items()):  # v4 configs serialize AddedTokens as {"__type": "AddedToken", ...}
        if isinstance(value, dict) and value.get("__type") == "AddedToken":
            config[key] = {k: v for k, v in value.items() if k != "__type"}
    if "added_tokens_decoder" not in config:
        # Legacy checkpoints: special_tokens_map.json fills the special tokens (the user's kwargs still win).
        map_file = resolve_file(path_or_repo_id, SPECIAL_TOKENS_MAP_FILE, required=False, **hub)
        if map_file is not None:
            for key, value in read_json(map_file).items():
                if overrides.get(key):
                    continue
                if key in ("additional_special_tokens", "extra_special_tokens") and isinstance(value, list):
                    existing = list(config.get("extra_special_tokens") or [])
                    existing += [v for v in value if v not in existing]
                    config["extra_special_tokens"] = existing
                else:
                    config[key] = value
    if tokenizer_file is not None:
        config["tokenizer_file"] = tokenizer_file
    config["name_or_path"] = os.fspath(path_or_repo_id)
    return config


class AutoTokenizer:
    """Pick the tokenizer class for a checkpoint the way transformers 5 does, then load it."""

    # transformers 5 ignores the declared tokenizer class for these model types and loads tokenizer.json as is
    GENERIC_MODEL_TYPES = ("llava", "llava_next", "vipllava", "mistral", "qwen2")

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, *, revision: str | None = None,
                        local_files_only: bool = False, cache_dir: str | None = None, token: str | bool | None = None,
                        subfolder: str | None = None, force_download: bool = False,
                        **kwargs: Any) -> PreTrainedTokenizerFast:
        hub = dict(revision=revision, local_files_only=local_files_only, cache_dir=cache_dir, token=token,
                   subfolder=subfolder, force_download=force_download)
        tokenizer_cls = cls.tokenizer_class_for(path_or_repo_id, hub)
        return tokenizer_cls(**load_tokenizer_kwargs(path_or_repo_id, hub, kwargs))

    @classmethod
    def tokenizer_class_for(cls, path_or_repo_id: str | os.PathLike, hub: dict[str, Any]) -> type:
        config_file = resolve_file(path_or_repo_id, TOKENIZER_CONFIG_FILE, required=False, **hub)
        declared = (read_json(config_file).get("tokenizer_class") or "") if config_file is not None else ""
        model_config_file = resolve_file(path_or_repo_id, "config.json", required=False, **hub)
        model_type = read_json(model_config_file).get("model_type") if model_config_file is not None else None
        if model_type in cls.GENERIC_MODEL_TYPES or declared.removesuffix("Fast") != "LlamaTokenizer":
            return PreTrainedTokenizerFast
        tokenizer_file = resolve_file(path_or_repo_id, TOKENIZER_FILE, required=False, **hub)
        if tokenizer_file is not None and _is_byte_level(tokenizer_file):
            return PreTrainedTokenizerFast  # a Llama-3 style tokenizer.json declared as LlamaTokenizer
        return LlamaTokenizerFast


def _is_byte_level(tokenizer_file: str) -> bool:
    raw = read_json(tokenizer_file)
    return "ByteLevel" in json.dumps([raw.get("pre_tokenizer"), raw.get("decoder")])
