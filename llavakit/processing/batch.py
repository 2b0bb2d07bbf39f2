"""BatchFeature: the dict a tokenizer, image processor or processor returns, with tensor conversion.

Keys read as attributes (`batch.input_ids`), `convert_to_tensors` turns lists into torch / numpy
arrays, and `.to(...)` moves tensors to a device or casts the floating ones to a dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _is_array_like(value: Any) -> bool:
    """Numbers, arrays and (nested) lists of them; strings, dicts and None are left alone."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return True
    if isinstance(value, (list, tuple)):
        return len(value) == 0 or _is_array_like(value[0]) or isinstance(value[0], (int, float, np.number))
    return False


def _lengths(value: Any) -> list[int] | None:
    """Row lengths of a list of rows, or None when the value is not a list of sequences."""
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple, np.ndarray, torch.Tensor)):
        return [len(row) for row in value]
    return None


def _stack_tensors(key: str, value: list[torch.Tensor]) -> torch.Tensor:
    shapes = [tuple(item.shape) for item in value]
    if len(set(shapes)) > 1:
        raise ValueError(f"cannot make one tensor of '{key}': its items have different shapes {shapes} (e.g. videos "
                         "with different frame counts); make them equal, or pass return_tensors=None to keep lists")
    return torch.stack(list(value))


def _to_numpy(key: str, value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    lengths = _lengths(value)
    if lengths is not None and len(set(lengths)) > 1:
        raise ValueError(
            f"cannot make one tensor of '{key}': its rows have different lengths {lengths}. "
            "Pass padding=True (or padding='max_length') to pad them, or return_tensors=None to keep lists."
        )
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return _stack_tensors(key, value).numpy()
    return np.asarray(value)


def _to_torch(key: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return _stack_tensors(key, value)
    return torch.from_numpy(np.ascontiguousarray(_to_numpy(key, value)))


class BatchFeature(dict):
    """A dict of model inputs (input_ids, attention_mask, pixel_values, ...), readable as attributes."""

    def __init__(self, data: dict[str, Any] | None = None, tensor_type: str | None = None):
        super().__init__(data or {})
        self.convert_to_tensors(tensor_type)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no key {name!r} (keys: {list(self)})") from None

    @property
    def data(self) -> dict[str, Any]:
        """The plain dict view (transformers' BatchFeature exposes `.data`)."""
        return dict(self)

    def convert_to_tensors(self, tensor_type: str | None = None) -> "BatchFeature":
        """Turn every array-like value into a torch tensor ("pt") or numpy array ("np"); None keeps them."""
        if tensor_type is None:
            return self
        tensor_type = getattr(tensor_type, "value", tensor_type)  # accept enum-like values
        if tensor_type not in ("pt", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {tensor_type!r}")
        convert = _to_torch if tensor_type == "pt" else _to_numpy
        for key, value in list(self.items()):
            if _is_array_like(value):
                self[key] = convert(key, value)
        return self

    def to(self, *args: Any, **kwargs: Any) -> "BatchFeature":
        """Move tensors to a device; a dtype casts only the floating-point tensors (ids stay integers)."""
        device = kwargs.get("device")
        non_blocking = kwargs.get("non_blocking", False)
        if device is None and args:
            first = args[0]
            if isinstance(first, torch.dtype):
                pass
            elif isinstance(first, (str, int, torch.device)):
                device = first
            else:
                raise ValueError(f"cannot move a {type(self).__name__} to {first!r}: give a device or a torch.dtype")

        def move(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and torch.is_floating_point(value):
                return value.to(*args, **kwargs)
            if isinstance(value, torch.Tensor) and device is not None:
                return value.to(device=device, non_blocking=non_blocking)
            if isinstance(value, (list, tuple)):
                return type(value)(move(item) for item in value)
            return value

        for key, value in list(self.items()):
            self[key] = move(value)
        return self


class BatchEncoding(BatchFeature):
    """What a tokenizer returns: a BatchFeature that also keeps the `tokenizers` encodings (offsets, tokens)."""

    def __init__(self, data: dict[str, Any] | None = None, encodings: list | None = None,
                 tensor_type: str | None = None):
        super().__init__(data, tensor_type=tensor_type)
        self._encodings = encodings

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return super().__getattr__(name)

    @property
    def encodings(self) -> list | None:
        """The `tokenizers.Encoding` of each row, or None."""
        return self._encodings

    def tokens(self, batch_index: int = 0) -> list[str]:
        """The token strings of one row."""
        if not self._encodings:
            raise ValueError("tokens() needs the encodings, which this BatchEncoding does not have")
        return self._encodings[batch_index].tokens
