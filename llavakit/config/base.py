"""The shared base of every config: read and write config.json the way transformers does.

A config is a plain dataclass. `from_dict` fills the fields it knows, keeps unknown keys as extra
attributes (so they survive a save), and leaves every missing key at the class's own default.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Any, ClassVar

import torch

CONFIG_NAME = "config.json"

def dtype_from_str(value: Any) -> torch.dtype | None:
    """'bfloat16' / 'torch.float16' / torch.float32 / None -> torch.dtype or None."""
    if value is None or value == "auto":
        return None
    if isinstance(value, torch.dtype):
        return value
    name = str(value).removeprefix("torch.")
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {value!r}: use e.g. 'float32', 'bfloat16' or 'float16'")
    return dtype


@dataclasses.dataclass(init=False)
class PretrainedConfig:
    """Base class: dataclass fields are the known keys; anything else in config.json is kept as-is.

    Subclasses are `@dataclass(init=False)` and share this keyword-only __init__, which, like
    transformers, accepts extra keys (`LlavaConfig(pad_token_id=0)`) and keeps them as attributes.
    """

    model_type: ClassVar[str] = ""

    # The dtype the checkpoint was saved in; config.json spells it `torch_dtype` (v4) or `dtype` (v5).
    dtype: str | None = None

    def __init__(self, **kwargs: Any) -> None:
        kwargs = self._rename_legacy_keys(dict(kwargs))
        if "torch_dtype" in kwargs:
            kwargs.setdefault("dtype", kwargs.pop("torch_dtype"))
        if isinstance(kwargs.get("dtype"), torch.dtype):
            kwargs["dtype"] = str(kwargs["dtype"]).removeprefix("torch.")
        for field in dataclasses.fields(self):
            if field.name in kwargs:
                value = kwargs.pop(field.name)
            elif field.default_factory is not dataclasses.MISSING:
                value = field.default_factory()
            else:
                value = copy.deepcopy(field.default)
            object.__setattr__(self, field.name, value)
        for key, value in kwargs.items():  # unknown keys, kept and saved again (even `_name_or_path`)
            setattr(self, key, value)
        self._extra_keys = list(kwargs)
        self.__post_init__()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError on values the model cannot run with. Subclasses extend this."""

    # ---- reading -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **overrides: Any) -> "PretrainedConfig":
        """Build from a config.json dict: known keys to fields, unknown keys kept as attributes."""
        data = {**copy.deepcopy(config_dict), **overrides}
        found_type = data.pop("model_type", cls.model_type)
        if cls.model_type and found_type and found_type != cls.model_type:
            raise ValueError(
                f"{cls.__name__} expects model_type {cls.model_type!r}, the config says {found_type!r}"
            )
        return cls(**data)

    @classmethod
    def _rename_legacy_keys(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Map old key names onto current field names. Subclasses list theirs."""
        return data

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, **kwargs: Any) -> "PretrainedConfig":
        """Read config.json from a folder or a Hub repo id."""
        from llavakit.loading.hub import resolve_file

        hub_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _HUB_KWARGS}
        path = resolve_file(path_or_repo_id, CONFIG_NAME, **hub_kwargs)
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f), **kwargs)

    # ---- writing -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this config: fields, extra keys and `model_type`."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, PretrainedConfig):
                value = value.to_dict()
            out[field.name] = copy.deepcopy(value)
        for key in getattr(self, "_extra_keys", []):
            out[key] = copy.deepcopy(getattr(self, key))
        if out.get("dtype") is None:
            out.pop("dtype")
        else:
            out["torch_dtype"] = out["dtype"]  # older readers only know this spelling
        out["model_type"] = self.model_type
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write config.json into `save_directory` (created if needed)."""
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, CONFIG_NAME), "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    def __setattr__(self, name: str, value: Any) -> None:
        # Attributes set after construction that are not fields become extra keys, as in transformers.
        super().__setattr__(name, value)
        if name.startswith("_") or name in {f.name for f in dataclasses.fields(self)}:
            return
        extra = self.__dict__.setdefault("_extra_keys", [])
        if name not in extra:
            extra.append(name)


_HUB_KWARGS = {"revision", "local_files_only", "cache_dir", "token", "force_download", "subfolder"}


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_positive(config: PretrainedConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive integer, got {value!r}")
