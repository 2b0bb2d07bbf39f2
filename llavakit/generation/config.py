"""GenerationConfig: the options of `generate` (lengths, sampling, special tokens), read from generation_config.json.

Like transformers, a config remembers which options were set explicitly (in the file, the constructor or by
assignment): `generate` fills only the unset ones from the model's defaults, and an unset `max_length` means
"20 new tokens" rather than "20 tokens in total".
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Any

GENERATION_CONFIG_NAME = "generation_config.json"
_HUB_KWARGS = ("revision", "local_files_only", "cache_dir", "token", "force_download", "subfolder")

# Decoding strategies transformers moved out of its core `generate` (to Hub `custom_generate` repos), with the
# values meaning "off". Any other value is an error that says so, never a silently ignored option.
MOVED_OUT_OPTIONS: dict[str, tuple[tuple[Any, ...], str]] = {
    "penalty_alpha": ((None, 0, 0.0), "contrastive search"),
    "dola_layers": ((None,), "DoLa decoding"),
    "num_beam_groups": ((None, 1), "group (diverse) beam search"),
    "diversity_penalty": ((None, 0, 0.0), "group (diverse) beam search"),
    "constraints": ((None,), "constrained beam search"),
    "force_words_ids": ((None,), "constrained beam search"),
}
# Other transformers options llavakit does not implement.
UNSUPPORTED_OPTIONS: dict[str, tuple[Any, ...]] = {
    "token_healing": (None, False), "prefill_chunk_size": (None,), "low_memory": (None, False),
    "encoder_no_repeat_ngram_size": (None, 0), "remove_invalid_values": (None, False),
}

CACHE_IMPLEMENTATIONS = (None, "static", "dynamic")


@dataclasses.dataclass
class GenerationConfig:
    """Options of `generate`. Unknown keys (from a file or the constructor's caller) are kept as attributes."""

    max_length: int = 20  # prompt + new tokens; unset means 20 *new* tokens
    max_new_tokens: int | None = None  # takes precedence over max_length
    min_length: int = 0
    min_new_tokens: int | None = None
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = 50  # None or 0 turns top-k off
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    num_beams: int = 1  # > 1: beam search (with do_sample: beam sampling)
    num_return_sequences: int = 1  # sequences returned per prompt (beams, or independent samples)
    length_penalty: float = 1.0  # beam scores are divided by length ** length_penalty
    early_stopping: bool | str = False  # beam search: True, False (heuristic) or "never"
    # sampling warpers beyond top-k/top-p (transformers' names and "off" values)
    min_p: float | None = None
    typical_p: float = 1.0
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    top_h: float | None = None
    # token constraints and penalties
    no_repeat_ngram_size: int = 0
    encoder_repetition_penalty: float = 1.0
    bad_words_ids: list[list[int]] | None = None
    suppress_tokens: list[int] | None = None
    begin_suppress_tokens: list[int] | None = None
    sequence_bias: Any = None  # {(ids...): bias} or [[[ids], bias], ...]
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | list[int] | None = None
    exponential_decay_length_penalty: tuple[int, float] | None = None
    renormalize_logits: bool = False
    guidance_scale: float | None = None
    watermarking_config: Any = None  # WatermarkingConfig or dict
    # stopping and outputs
    max_time: float | None = None  # seconds
    output_attentions: bool = False
    output_hidden_states: bool = False
    # assisted decoding
    prompt_lookup_num_tokens: int | None = None  # > 0: draft tokens copied from the prompt (n-gram lookup)
    max_matching_ngram_size: int | None = None  # prompt lookup: longest n-gram matched (None: 2)
    num_assistant_tokens: int = 20  # tokens an assistant model drafts per step
    num_assistant_tokens_schedule: str = "constant"  # "constant", "heuristic" or "heuristic_transient"
    eos_token_id: int | list[int] | None = None
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    stop_strings: str | list[str] | None = None
    use_cache: bool = True
    return_dict_in_generate: bool = False
    output_scores: bool = False
    output_logits: bool = False
    cache_implementation: str | None = None  # None/"static": pre-allocated KV cache; "dynamic": grown per step
    disable_compile: bool = False  # True: never compile the decode step (it is compiled by default on CUDA)

    def __post_init__(self) -> None:
        # Constructor arguments that differ from the defaults count as explicitly set.
        explicit = {f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default}
        object.__setattr__(self, "_explicit", explicit)
        object.__setattr__(self, "_extra_keys", [])
        self.validate()

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name.startswith("_") or "_explicit" not in self.__dict__:
            return
        if name in _FIELD_NAMES:
            self._explicit.add(name)
        elif name not in self._extra_keys:
            self._extra_keys.append(name)

    # ---- validation ------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError on values `generate` cannot run with; the message names the option and value."""
        _check_int("max_length", self.max_length, minimum=1)
        _check_int("max_new_tokens", self.max_new_tokens, minimum=1, allow_none=True)
        _check_int("min_length", self.min_length, minimum=0)
        _check_int("min_new_tokens", self.min_new_tokens, minimum=0, allow_none=True)
        _check_int("top_k", self.top_k, minimum=0, allow_none=True)
        _check_int("num_beams", self.num_beams, minimum=1)
        _check_int("num_return_sequences", self.num_return_sequences, minimum=1)
        _check_int("no_repeat_ngram_size", self.no_repeat_ngram_size, minimum=0)
        _check_int("prompt_lookup_num_tokens", self.prompt_lookup_num_tokens, minimum=1, allow_none=True)
        _check_int("max_matching_ngram_size", self.max_matching_ngram_size, minimum=1, allow_none=True)
        _check_int("num_assistant_tokens", self.num_assistant_tokens, minimum=1)
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if not _is_number(self.length_penalty):
            raise ValueError(f"length_penalty must be a number, got {self.length_penalty!r}")
        if self.max_time is not None and (not _is_number(self.max_time) or self.max_time <= 0):
            raise ValueError(f"max_time must be a number of seconds > 0, got {self.max_time!r}")
        if self.num_assistant_tokens_schedule not in ("constant", "heuristic", "heuristic_transient"):
            raise ValueError("num_assistant_tokens_schedule must be 'constant', 'heuristic' or "
                             f"'heuristic_transient', got {self.num_assistant_tokens_schedule!r}")
        for name in ("encoder_repetition_penalty",):
            if not _is_number(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a number > 0 (1.0 = off), got {getattr(self, name)!r}")
        if self.guidance_scale is not None and not _is_number(self.guidance_scale):
            raise ValueError(f"guidance_scale must be a number (1 = off), got {self.guidance_scale!r}")
        if not _is_number(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be a number > 0 (1.0 = off), got {self.repetition_penalty!r}")
        if self.do_sample:
            if not _is_number(self.temperature) or self.temperature <= 0:
                raise ValueError(f"temperature must be > 0 when do_sample=True, got {self.temperature!r}; "
                                 "for greedy decoding set do_sample=False")
            if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
                raise ValueError(f"top_p must be in (0, 1] (1.0 = off), got {self.top_p!r}")
        for name in ("eos_token_id", "bos_token_id", "pad_token_id"):
            value = getattr(self, name)
            ids = value if name == "eos_token_id" and isinstance(value, (list, tuple)) else [value]
            if value is not None and not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise ValueError(f"{name} must be an int{' or a list of ints' if name == 'eos_token_id' else ''}, "
                                 f"got {value!r}")
        stops = [self.stop_strings] if isinstance(self.stop_strings, str) else self.stop_strings
        if stops is not None and (not isinstance(stops, (list, tuple)) or not stops
                                  or not all(isinstance(s, str) and s for s in stops)):
            raise ValueError(f"stop_strings must be a non-empty string or a list of them, got {self.stop_strings!r}")
        if self.cache_implementation not in CACHE_IMPLEMENTATIONS:
            raise ValueError(f"cache_implementation must be one of {CACHE_IMPLEMENTATIONS}, got "
                             f"{self.cache_implementation!r}")
        for name in set(MOVED_OUT_OPTIONS) | set(UNSUPPORTED_OPTIONS):
            if name in self._extra_keys:
                check_supported(name, getattr(self, name))

    def check_for_generate(self) -> None:
        """Checks that involve several options, run when `generate` starts (a config may be built up in steps)."""
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            raise ValueError(f"num_return_sequences={self.num_return_sequences} needs sampling (do_sample=True) or "
                             "beam search (num_beams > 1): greedy decoding returns one sequence per prompt")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences={self.num_return_sequences} must be <= num_beams="
                             f"{self.num_beams}: beam search returns its best beams")
        assisted = self.prompt_lookup_num_tokens is not None
        if assisted and (self.num_beams > 1 or self.do_sample):
            raise ValueError("prompt_lookup_num_tokens (assisted decoding) works with greedy decoding only "
                             "(do_sample=False, num_beams=1)")

    # ---- reading ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> "GenerationConfig":
        """Build from a generation_config.json dict (plus overrides); every key present counts as set."""
        data = {**config_dict, **kwargs}
        # null in a file means "unset" (transformers writes it that way), so the default stays.
        known = {k: v for k, v in data.items() if k in _FIELD_NAMES and v is not None}
        config = cls(**known)
        config._explicit.update(known)
        for key, value in data.items():
            if key not in _FIELD_NAMES:
                object.__setattr__(config, key, value)
                config._extra_keys.append(key)
        config.validate()
        return config

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike,
                        config_file_name: str = GENERATION_CONFIG_NAME, **kwargs: Any) -> "GenerationConfig":
        """Read generation_config.json from a folder or Hub repo id; extra kwargs override its values."""
        from llavakit.loading.hub import resolve_file

        hub = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
        path = resolve_file(pretrained_model_name_or_path, config_file_name, **hub)
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
        return cls.from_dict(data, **kwargs)

    @classmethod
    def from_model_config(cls, model_config: Any) -> "GenerationConfig":
        """Defaults for a model without generation_config.json: bos/eos/pad ids of its config or text_config."""
        if isinstance(model_config, dict):
            outer, inner = model_config, model_config.get("text_config") or {}
            get = dict.get
        else:
            outer, inner = model_config, getattr(model_config, "text_config", None)
            get = getattr
        values = {}
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = get(outer, name, None)
            if value is None and inner is not None:
                value = get(inner, name, None)
            if value is not None:
                values[name] = value
        config = cls.from_dict(values)
        config._from_model_config = True
        return config

    # ---- writing ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every option (set or default) plus the extra keys."""
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out.update({k: copy.deepcopy(getattr(self, k)) for k in self._extra_keys})
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        """Only what was set explicitly, plus the extra keys: what transformers writes to generation_config.json.

        Writing the defaults too would change their meaning for readers: an explicit max_length of 20 caps the
        total length, an unset one allows 20 new tokens.
        """
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)
               if f.name in self._explicit}
        out.update({k: copy.deepcopy(getattr(self, k)) for k in self._extra_keys})
        return out

    def to_json_string(self, use_diff: bool = True) -> str:
        data = self.to_diff_dict() if use_diff else self.to_dict()
        if isinstance(data.get("sequence_bias"), dict):  # tuple keys: written as transformers' list form
            data["sequence_bias"] = [[list(ids), bias] for ids, bias in data["sequence_bias"].items()]
        if dataclasses.is_dataclass(data.get("watermarking_config")):
            data["watermarking_config"] = dataclasses.asdict(data["watermarking_config"])
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike,
                        config_file_name: str = GENERATION_CONFIG_NAME) -> None:
        """Write generation_config.json into `save_directory` (created if needed)."""
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, config_file_name), "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    # ---- merging ---------------------------------------------------------------------------------
    def update(self, **kwargs: Any) -> dict[str, Any]:
        """Set the options named in kwargs (known fields and existing extra keys); return the other kwargs."""
        unused = {}
        for key, value in kwargs.items():
            if value is None and _DEFAULTS.get(key) is not None and key != "top_k":
                if key in ("max_length", "min_length"):
                    continue  # None = not given: the length stays as it is
                value = _DEFAULTS[key]  # None = off (temperature/top_p/penalty 1.0, flags False)
            if key in _FIELD_NAMES or key in self._extra_keys:
                setattr(self, key, value)
            else:
                unused[key] = value
        self.validate()
        return unused

    def is_set(self, name: str) -> bool:
        """Whether `name` was given explicitly (file, constructor, update or assignment) rather than defaulted."""
        return name in self._explicit or name in self._extra_keys

    def merged_with_defaults(self, defaults: "GenerationConfig") -> "GenerationConfig":
        """A copy of self whose unset options come from `defaults` (the model's generation_config)."""
        merged = copy.deepcopy(self)
        for name in sorted(defaults._explicit - merged._explicit):
            setattr(merged, name, copy.deepcopy(getattr(defaults, name)))
        for name in defaults._extra_keys:
            if name not in merged._extra_keys:
                setattr(merged, name, copy.deepcopy(getattr(defaults, name)))
        return merged

    def __repr__(self) -> str:
        return f"GenerationConfig {self.to_json_string()}"


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(GenerationConfig))
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GenerationConfig)}


def check_supported(name: str, value: Any) -> None:
    """Raise ValueError when `name` is a transformers option llavakit does not run, set to a non-off value."""
    if name in MOVED_OUT_OPTIONS:
        off_values, strategy = MOVED_OUT_OPTIONS[name]
        if value not in off_values:
            raise ValueError(f"{name}={value!r} selects {strategy}, which transformers moved out of its core "
                             "generate (to Hub custom_generate repos); llavakit does not implement it")
    elif name in UNSUPPORTED_OPTIONS and value not in UNSUPPORTED_OPTIONS[name]:
        raise ValueError(f"{name}={value!r} is a transformers generation option that llavakit does not support")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(name: str, value: Any, *, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
