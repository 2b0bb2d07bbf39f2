"""device_map: which device each part of a model lives on, and the hooks that run a model split over several.

A model is cut into units that never split: decoder layers, vision-encoder layers, the vision embeddings,
the projector, and otherwise single weight-holding modules (embed_tokens, norms, lm_head). Each unit gets a
device (from the user's map, or planned from sizes for "auto" / "balanced" / "sequential"), its weights are
loaded straight onto it, and a forward pre-hook moves the unit's inputs there. That is pipeline placement
(one device computes at a time), which fits a model too big for one device; for speed see tensor parallelism.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch
from torch import nn

from llavakit.loading import keymaps

STRATEGIES = ("auto", "balanced", "sequential")
GPU_HEADROOM = 0.9  # fraction of a GPU's free memory the weights may take; the rest is for activations and cache


@dataclasses.dataclass
class Placement:
    """Unit name -> device. `single` is the device when everything is on one."""

    units: dict[str, torch.device]
    single: torch.device | None

    @property
    def is_split(self) -> bool:
        return self.single is None

    def unit_of(self, name: str) -> str:
        """The unit holding this parameter or module: the longest unit name that prefixes it ('' if none)."""
        while name and name not in self.units:
            name = name.rpartition(".")[0]
        return name

    def device_of(self, param_name: str) -> torch.device:
        """The device of the unit holding this parameter (KeyError when no unit, not even '', holds it)."""
        return self.units[self.unit_of(param_name)]

    @property
    def hf_device_map(self) -> dict[str, int | str]:
        """As transformers writes it: module name -> GPU index or 'cpu' (our module names)."""
        return {name: _public(device) for name, device in self.units.items()}


def no_split_classes() -> tuple[type, ...]:
    """Modules whose inside must stay on one device (their forward mixes their children's outputs)."""
    from llavakit.models.clip import CLIPEncoderLayer, CLIPVisionEmbeddings
    from llavakit.models.llama import LlamaDecoderLayer
    from llavakit.models.llava import LlavaMultiModalProjector
    from llavakit.models.siglip import SiglipMultiheadAttentionPoolingHead, SiglipVisionEmbeddings
    from llavakit.models.vipllava import VipLlavaMultiModalProjector

    return (LlamaDecoderLayer, CLIPEncoderLayer, CLIPVisionEmbeddings, SiglipVisionEmbeddings,
            SiglipMultiheadAttentionPoolingHead, LlavaMultiModalProjector, VipLlavaMultiModalProjector)


def model_units(model: nn.Module) -> list[str]:
    """The model's units in execution order (module order): no-split modules, weight-holding leaves, and
    parameters held directly by other modules (e.g. LLaVA-NeXT's image_newline)."""
    atomic = no_split_classes()
    units: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        own = [n for n, _ in module.named_parameters(recurse=False)]
        if isinstance(module, atomic) or (not list(module.children()) and own):
            units.append(prefix)
            return
        units.extend(f"{prefix}.{n}" if prefix else n for n in own)
        for name, child in module.named_children():
            visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", model)
    return units


def unit_sizes(model: nn.Module, units: list[str], dtype: torch.dtype) -> dict[str, int]:
    """Bytes each unit will take in `dtype` (a tied weight counts once, in the first unit holding it)."""
    placement = Placement({name: torch.device("cpu") for name in units}, None)
    sizes, seen = dict.fromkeys(units, 0), set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            continue
        seen.add(id(param))
        unit = placement.unit_of(name)
        size = dtype.itemsize if param.is_floating_point() else param.element_size()
        sizes[unit] += param.numel() * size
    return sizes


def plan(model: nn.Module, device_map: Any, *, max_memory: dict | None = None,
         dtype: torch.dtype = torch.float32) -> Placement:
    """Where each unit of `model` (built on the meta device) goes, for from_pretrained's device_map."""
    if max_memory is not None and device_map not in STRATEGIES:
        raise ValueError(f"max_memory applies to device_map='auto', 'balanced' or 'sequential', not {device_map!r}")
    if device_map is None:
        return Placement({"": torch.device("cpu")}, torch.device("cpu"))
    if isinstance(device_map, dict) and set(device_map) == {""}:
        device_map = device_map[""]
    if isinstance(device_map, dict):
        units = _explicit(model, device_map)
    elif device_map in STRATEGIES or device_map == "balanced_low_0":
        if device_map == "balanced_low_0":
            raise ValueError("device_map='balanced_low_0' is not supported; use 'auto', 'balanced' or 'sequential'")
        names = model_units(model)
        capacities = _capacities(max_memory)
        units = plan_units(list(unit_sizes(model, names, dtype).items()), capacities,
                           "sequential" if device_map == "sequential" else "balanced")
        units = _keep_tied_together(model, units)
    else:
        device = as_device(device_map)
        return Placement({"": device}, device)
    devices = set(units.values())
    if len(devices) == 1:
        device = devices.pop()
        return Placement({"": device} if not isinstance(device_map, dict) else units, device)
    return Placement(units, None)


def plan_units(sizes: list[tuple[str, int]], capacities: list[tuple[torch.device, float]],
               strategy: str = "balanced") -> dict[str, torch.device]:
    """Assign units (in order, with byte sizes) to devices (in order, with byte capacities).

    "sequential" fills each device before the next; "balanced" gives each GPU about an equal share of
    the total (the CPU, last, takes what the GPUs cannot). A unit never splits. Raises when they do not fit.
    """
    if strategy not in ("balanced", "sequential"):
        raise ValueError(f"unknown placement strategy {strategy!r}")
    total = sum(size for _, size in sizes)
    gpus = [device for device, _ in capacities if device.type != "cpu"]
    if strategy == "balanced" and len(gpus) > 1:
        even = _even(sizes, gpus, total)
        used = {device: sum(size for name, size in sizes if even[name] == device) for device in gpus}
        if all(used[device] <= cap for device, cap in capacities if device in used):
            return even
    units = _fill(sizes, capacities, [cap for _, cap in capacities])
    if units is None:
        room = ", ".join(f"{_public(d)}: {cap / 2**30:.2f} GiB" for d, cap in capacities)
        raise ValueError(f"the model needs {total / 2**30:.2f} GiB but the devices offer {room}; raise max_memory "
                         f"or use more devices (offloading to disk is not supported)")
    return units


def _even(sizes: list[tuple[str, int]], gpus: list[torch.device], total: int) -> dict[str, torch.device]:
    """Cut the ordered units into len(gpus) runs of about total / len(gpus) bytes (by each unit's midpoint)."""
    share, seen, units = max(total / len(gpus), 1), 0, {}
    for name, size in sizes:
        units[name] = gpus[min(int((seen + size / 2) / share), len(gpus) - 1)]
        seen += size
    return units


def _fill(sizes: list[tuple[str, int]], capacities: list[tuple[torch.device, float]],
          budgets: list[float]) -> dict[str, torch.device] | None:
    """Greedy in-order fill: stay on a device while the next unit fits its budget, else move on."""
    units, index, used = {}, 0, 0.0
    for name, size in sizes:
        while index < len(capacities) and used + size > budgets[index]:
            index, used = index + 1, 0.0
        if index == len(capacities):
            return None
        units[name] = capacities[index][0]
        used += size
    return units


def _capacities(max_memory: dict | None) -> list[tuple[torch.device, float]]:
    """(device, bytes) for the visible GPUs in order, then the CPU: from max_memory, else free GPU memory."""
    limits = {_memory_key(k): parse_size(v) for k, v in (max_memory or {}).items()}
    gpus = range(torch.cuda.device_count()) if torch.cuda.is_available() else range(0)
    unknown = [k for k in limits if k != "cpu" and k not in gpus]
    if unknown:
        raise ValueError(f"max_memory names devices that are not visible: {unknown} (GPUs: {list(gpus)}, 'cpu')")
    capacities: list[tuple[torch.device, float]] = []
    for i in gpus:
        cap = limits[i] if i in limits else torch.cuda.mem_get_info(i)[0] * GPU_HEADROOM
        capacities.append((torch.device("cuda", i), float(cap)))
    capacities.append((torch.device("cpu"), float(limits.get("cpu", float("inf")))))
    return capacities


def _memory_key(key: Any) -> int | str:
    if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
        return int(key)
    if isinstance(key, str) and re.fullmatch(r"cuda:\d+", key):
        return int(key.split(":")[1])
    if key == "cpu":
        return "cpu"
    raise ValueError(f"max_memory key {key!r} must be a GPU index (0, 'cuda:1') or 'cpu'")


def parse_size(value: Any) -> float:
    """Bytes from 1_000_000, '10GiB', '500MB', '2.5 GB', ..."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]i?B|B)?\s*", str(value), re.IGNORECASE)
    if not match:
        raise ValueError(f"max_memory value {value!r} is not a size like 10GiB, 500MB or a number of bytes")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    return number * scale


def as_device(value: Any) -> torch.device:
    """One device_map value: 0 / 'cuda:1' / 'cuda' / 'cpu' / torch.device; 'disk' and 'meta' are refused."""
    if value in ("disk", "meta"):
        raise ValueError(f"device_map value {value!r} is not supported: llavakit keeps every weight on a GPU or "
                         f"the CPU (no disk offload)")
    if value == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"cuda:{value}"
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"device_map value {value!r} is not a device (use 0, 'cuda:1', 'cpu' or 'auto')") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device_map={value!r} asks for CUDA, but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device_map names {device} but only {torch.cuda.device_count()} GPU(s) are visible")
        if device.index is None:
            device = torch.device("cuda", 0)
    return device


def _explicit(model: nn.Module, device_map: dict) -> dict[str, torch.device]:
    """A user's {module name: device} (transformers 4 or 5 spellings) -> a device for every unit."""
    names = dict(model.named_modules())
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    to_hub, from_hub = keymaps.layout_rules(type(model).__name__)
    wanted: dict[str, torch.device] = {}
    for key, value in device_map.items():
        ours = "" if key == "" else keymaps.rename(keymaps.rename(f"{key}.", to_hub), from_hub).rstrip(".")
        if ours not in names and ours not in params:
            raise ValueError(f"device_map key {key!r} names no module of {type(model).__name__} (looked for "
                             f"{ours!r}); names look like 'vision_tower', 'language_model.model.layers.0' or "
                             f"'model.language_model.layers.0'")
        wanted[ours] = as_device(value)
    lookup = Placement(wanted, None)
    units, missing = {}, []
    for unit in model_units(model):
        inside = [k for k in wanted if k.startswith(f"{unit}.") and k != unit]
        if inside:
            raise ValueError(f"device_map splits {unit!r} (it names {inside[0]!r}); give whole units such as "
                             f"decoder layers, which run on one device")
        try:
            units[unit] = lookup.device_of(unit)
        except KeyError:
            missing.append(unit)
    if missing:
        raise ValueError(f"device_map gives no device for {missing[:5]}" + (" ..." if len(missing) > 5 else "")
                         + "; add them (or a parent module, or '' for the rest)")
    return _keep_tied_together(model, units, strict=True)


def _keep_tied_together(model: nn.Module, units: dict[str, torch.device],
                        strict: bool = False) -> dict[str, torch.device]:
    """A tied LM head shares its weight with the embeddings, so both must sit on one device."""
    head, embed = model.get_output_embeddings(), None
    if head is None or head.weight is not model.get_input_embeddings().weight:
        return units
    embed = model.get_input_embeddings()
    where = {id(m): n for n, m in model.named_modules()}
    head_name, embed_name = where[id(head)], where[id(embed)]
    if head_name in units and embed_name in units and units[head_name] != units[embed_name]:
        if strict:
            raise ValueError(f"{head_name!r} is tied to {embed_name!r} (tie_word_embeddings): give both the same "
                             f"device")
        units = {**units, head_name: units[embed_name]}
    return units


def _public(device: torch.device) -> int | str:
    return device.index if device.type == "cuda" else str(device)


def to_device(value: Any, device: torch.device) -> Any:
    """Tensors (also inside tuples, lists and dicts) moved to `device`; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def dispatch(model: nn.Module, placement: Placement) -> None:
    """Hook every unit so its inputs move to its device before its forward runs."""
    for name, device in placement.units.items():
        try:
            module = model.get_submodule(name) if name else model
        except AttributeError:
            continue  # a bare parameter (e.g. image_newline): its users move it themselves

        def move_inputs(module: nn.Module, args: tuple, kwargs: dict, device: torch.device = device):
            return to_device(args, device), to_device(kwargs, device)

        module.register_forward_pre_hook(move_inputs, with_kwargs=True)
