"""Names transformers renamed, kept working with a FutureWarning for as long as transformers keeps them.

llavakit follows the newest transformers release. Every old name it still accepts is listed here, with the
transformers release that drops it, so the version differences live in one place:

| old name                          | new name                               | since | removed in |
|-----------------------------------|----------------------------------------|-------|------------|
| forward(past_key_values=...)      | forward(cache=...)                     | 5.24  | 5.40       |
| output.past_key_values            | output.cache                           | 5.24  | 5.40       |
| output.image_hidden_states        | output.image_outputs.pooler_output     | 5.24  | 5.30 *     |
| output.video_hidden_states        | output.video_outputs.pooler_output     | 5.24  | 5.30 *     |

* from 5.30 transformers gives `image_hidden_states` / `video_hidden_states` another meaning (per-layer hidden states).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

# old keyword / attribute -> (new name, the transformers release that removes the old one)
RENAMED = {
    "past_key_values": ("cache", "5.40.0"),
}
IMAGE_HIDDEN_STATES_MESSAGE = ("`image_hidden_states` is deprecated: transformers gives it another meaning (all "
                               "hidden states per layer) from v5.30. Use `out.image_outputs.pooler_output` for the "
                               "projected features (one tensor per image).")
VIDEO_HIDDEN_STATES_MESSAGE = ("`video_hidden_states` is deprecated: transformers gives it another meaning (all "
                               "hidden states per layer) from v5.30. Use `out.video_outputs.pooler_output` for the "
                               "projected video features (num_videos, tokens, H).")


def warn_renamed(old: str, where: str, stacklevel: int = 3) -> None:
    """Say that `old` is deprecated in `where`, what replaces it and when it goes."""
    new, removed_in = RENAMED[old]
    warnings.warn(f"`{old}` is deprecated and will be removed in transformers {removed_in} for `{where}`. "
                  f"Use `{new}` instead.", FutureWarning, stacklevel=stacklevel)


def rename_kwargs(kwargs: dict[str, Any], where: str, stacklevel: int = 4) -> dict[str, Any]:
    """Move deprecated keywords in `kwargs` to their new names (the new name wins when both are given)."""
    for old, (new, _) in RENAMED.items():
        if old in kwargs:
            value = kwargs.pop(old)
            warn_renamed(old, where, stacklevel)
            kwargs.setdefault(new, value)
    return kwargs


def accepts_renamed_kwargs(func: Callable) -> Callable:
    """Decorate a forward so that `past_key_values=` still works (as `cache=`), with a FutureWarning."""

    @functools.wraps(func)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if any(old in kwargs for old in RENAMED):
            rename_kwargs(kwargs, f"{type(self).__name__}.{func.__name__}")
        return func(self, *args, **kwargs)

    return wrapper
