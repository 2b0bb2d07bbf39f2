"""Which nn.Linear layers get quantized: every plain Linear whose name no skip pattern matches.

A pattern (a module name or a regex) matches whole dotted parts anywhere in the name, in llavakit's
naming or transformers' (`vision_tower` and `model.vision_tower` both skip the vision tower).
"""

from __future__ import annotations

import re

from torch import nn

# llavakit module names -> transformers 5 in-memory names, so users can reuse their skip lists
TO_TRANSFORMERS = (("language_model.model.", "model.language_model."), ("language_model.lm_head", "lm_head"),
                   ("vision_tower.vision_model.", "model.vision_tower."),
                   ("multi_modal_projector", "model.multi_modal_projector"))


def transformers_name(name: str) -> str:
    for ours, theirs in TO_TRANSFORMERS:
        if name.startswith(ours):
            return theirs + name[len(ours):]
    return name


def is_skipped(name: str, patterns: tuple[str, ...]) -> bool:
    names = (name, transformers_name(name))
    return any(re.search(rf"(?:^|\.)(?:{pattern})(?:\.|$)", n) for pattern in patterns for n in names)


def linears_to_quantize(model: nn.Module, skip: tuple[str, ...]) -> list[str]:
    """Names of the plain nn.Linear modules to replace (subclasses, e.g. peft or already quantized, are left)."""
    return [name for name, module in model.named_modules() if type(module) is nn.Linear and not is_skipped(name, skip)]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
