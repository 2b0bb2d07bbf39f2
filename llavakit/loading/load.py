"""from_pretrained: config.json + safetensors -> a model on the target device, in the target dtype.

The model is built on the meta device (no memory), then each checkpoint tensor is read from its
memory-mapped file, cast and moved, and put in place of the meta parameter. At no point do two full
copies of the weights exist, so a 7B checkpoint loads in bf16 within about 15 GiB of RAM.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from llavakit.config.base import PretrainedConfig, dtype_from_str
from llavakit.loading import device_map as device_maps
from llavakit.loading import keymaps
from llavakit.loading.hub import CheckpointNotFoundError, read_json, resolve_file, resolve_optional
from llavakit.models.layers import ATTN_IMPLEMENTATIONS, check_flash_attention

logger = logging.getLogger(__name__)

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
HUB_KWARGS = ("revision", "local_files_only", "cache_dir", "token", "force_download", "subfolder")
# Arguments transformers users pass that need no action here: we never run code from a checkpoint,
# loading is always low-memory, and llavakit has its own kernels (transformers 5.25 swaps in Hub kernels on
# CUDA unless use_kernels=False; the math is the same).
ACCEPTED_NO_OP = ("trust_remote_code", "low_cpu_mem_usage", "use_safetensors_index", "offload_folder", "use_kernels",
                  "kernel_config", "kernels_mode")


Device = torch.device | Callable[[str], torch.device]  # one device, or one per parameter name


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not fit the model: missing, unexpected or mis-shaped names."""


def load_pretrained(cls: type, path_or_repo_id: str | os.PathLike, *, config: PretrainedConfig | None = None,
                    dtype: Any = "auto", torch_dtype: Any = None, device_map: Any = None,
                    attn_implementation: str | None = None, use_flash_attention_2: bool = False,
                    use_safetensors: bool | None = None, quantization_config: Any = None,
                    **kwargs: Any) -> nn.Module:
    """Load `cls` from a folder or Hub repo id. See PreTrainedModel.from_pretrained."""
    hub = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
    tp_plan, tp_size = kwargs.pop("tp_plan", None), kwargs.pop("tp_size", None)
    max_memory = kwargs.pop("max_memory", None)
    tp_device = None
    if tp_plan is not None or tp_size is not None:  # load whole on the CPU, then keep this rank's slices
        from llavakit.distributed.tensor_parallel import tensor_parallel_device

        if quantization_config is not None:
            raise ValueError("tp_plan and quantization_config cannot be combined yet: shard a bf16/fp16 model")
        tp_device = tensor_parallel_device(tp_plan, tp_size, device_map)
    for name in ACCEPTED_NO_OP:
        kwargs.pop(name, None)
    if quantization_config is not None:  # validated now, applied once the weights are in place
        from llavakit.quantization import parse_config

        quantization_config = parse_config(quantization_config)
    if use_flash_attention_2:
        attn_implementation = "flash_attention_2"
    attn_implementation = attn_implementation or "sdpa"
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation={attn_implementation!r} is not available; "
                         f"choose one of {ATTN_IMPLEMENTATIONS}")
    if attn_implementation == "flash_attention_2":
        check_flash_attention()  # flash-attn installed and a CUDA GPU present, else a clear ImportError

    original_checkpoint = None
    if config is None or getattr(config, "mm_vision_tower", None) is not None:
        data = read_json(resolve_file(path_or_repo_id, "config.json", **hub))
        from llavakit.loading import original  # original LLaVA layout (liuhaotian / mucai): converted on load

        if original.is_original_config(data):
            original_checkpoint = original.prepare(cls, path_or_repo_id, data, hub=hub, use_safetensors=use_safetensors,
                                                   vision_tower=kwargs.pop("vision_tower", None),
                                                   model_base=kwargs.pop("model_base", None),
                                                   via_auto=config is not None)
            cls, config = original_checkpoint.model_class, original_checkpoint.config
        elif config is None:
            config = _config_from_dict(cls, data)
    config = _apply_overrides(config, kwargs)
    config._attn_implementation = attn_implementation
    target_dtype = _resolve_dtype(torch_dtype if torch_dtype is not None else dtype, config)

    files = checkpoint_files(path_or_repo_id, use_safetensors, hub) if original_checkpoint is None else []
    with torch.device("meta"), _skip_init():
        model = cls(config)
    placement = device_maps.plan(model, device_map, max_memory=max_memory, dtype=target_dtype)
    device = placement.device_of if placement.is_split else placement.single
    if original_checkpoint is None:
        load_weights(model, files, dtype=target_dtype, device=device)
    else:
        load_tensors(model, original_checkpoint.tensors(), dtype=target_dtype, device=device,
                     where=original_checkpoint.where)
    model.eval()
    if quantization_config is not None:  # each Linear is quantized on the device its weight was loaded to
        from llavakit.quantization import quantize_

        quantize_(model, quantization_config)
    if placement.is_split:
        device_maps.dispatch(model, placement)
    if device_map is not None:
        model.hf_device_map = placement.hf_device_map
    if tp_device is not None:
        from llavakit.distributed.tensor_parallel import shard_model

        shard_model(model).to(tp_device)
    if hasattr(model, "generate"):
        model.generation_config = _read_generation_config(path_or_repo_id, config, hub)
    model.name_or_path = os.fspath(path_or_repo_id)
    return model


@contextlib.contextmanager
def _skip_init() -> Iterator[None]:
    """Build modules without torch's random init (loading overwrites every weight). On the meta device init
    fills nothing anyway, but nn.init.normal_ there imports torch._dynamo: seconds of CLI start-up."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    for name in saved:
        setattr(nn.init, name, _keep)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


_INIT_FUNCTIONS = ("normal_", "trunc_normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                   "xavier_normal_", "constant_", "zeros_", "ones_")


def _keep(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return tensor


def _config_from_dict(cls: type, data: dict[str, Any]) -> PretrainedConfig:
    expected = cls.config_class.model_type
    found = data.get("model_type")
    if expected and found != expected:
        raise ValueError(
            f"{cls.__name__} cannot load a {found!r} checkpoint (it needs model_type {expected!r}); "
            f"AutoModelForImageTextToText picks the right class for you"
        )
    return cls.config_class.from_dict(data)


def _apply_overrides(config: PretrainedConfig, overrides: dict[str, Any]) -> PretrainedConfig:
    """from_pretrained(..., vision_feature_layer=-1) style config overrides; anything else is a typo."""
    if not overrides:
        return config
    unknown = [k for k in overrides if not hasattr(config, k)]
    if unknown:
        raise TypeError(f"from_pretrained got unexpected arguments {unknown}")
    data = config.to_dict()
    data.update(overrides)
    return type(config).from_dict(data)


def _resolve_dtype(dtype: Any, config: PretrainedConfig) -> torch.dtype:
    """'auto' (the default, as in transformers 5) means the dtype config.json records, else float32."""
    if dtype is None or dtype == "auto":
        return dtype_from_str(getattr(config, "dtype", None)) or torch.float32
    resolved = dtype_from_str(dtype)
    if not resolved.is_floating_point:
        raise ValueError(f"dtype must be a floating point type, got {dtype!r}")
    return resolved


def checkpoint_files(path_or_repo_id: str | os.PathLike, use_safetensors: bool | None,
                     hub: dict[str, Any]) -> list[str]:
    """The weight files to read: sharded or single safetensors; pickle files only when the user opts in."""
    names: list[tuple[str, str]] = [(SAFE_INDEX, SAFE_SINGLE)]
    if use_safetensors is False:
        names.append((PICKLE_INDEX, PICKLE_SINGLE))
    for index_name, single_name in names:
        index = resolve_optional(path_or_repo_id, index_name, **hub)
        if index is not None:
            shard_names = sorted(set(read_json(index)["weight_map"].values()))
            return [resolve_file(path_or_repo_id, name, **hub) for name in shard_names]
        single = resolve_optional(path_or_repo_id, single_name, **hub)
        if single is not None:
            return [single]
    if use_safetensors is not False and (resolve_optional(path_or_repo_id, PICKLE_SINGLE, **hub)
                                         or resolve_optional(path_or_repo_id, PICKLE_INDEX, **hub)):
        raise CheckpointNotFoundError(
            f"{os.fspath(path_or_repo_id)} has only pickle weights (pytorch_model.bin). Unpickling can run "
            f"arbitrary code, so llavakit reads it only if you ask: from_pretrained(..., use_safetensors=False)"
        )
    raise CheckpointNotFoundError(f"no model.safetensors or {SAFE_INDEX} in {os.fspath(path_or_repo_id)}")


def _iter_tensors(path: str):
    """(name, tensor) pairs of one weight file, read lazily (safetensors is memory-mapped)."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
    else:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        yield from state.items()


def load_weights(model: nn.Module, files: list[str], *, dtype: torch.dtype, device: Device) -> None:
    """Fill a meta-device model from weight files; raise naming every missing, unexpected or mis-shaped key."""
    where = files[0] if files else "(no files)"
    if len(files) > 1:
        where += " (+%d more files)" % (len(files) - 1)
    load_tensors(model, (item for path in files for item in _iter_tensors(path)), dtype=dtype, device=device,
                 where=where)


def load_tensors(model: nn.Module, tensors: Iterable[tuple[str, torch.Tensor]], *, dtype: torch.dtype,
                 device: Device, where: str) -> None:
    """Fill a meta-device model from (checkpoint name, tensor) pairs; `where` names their source in errors.

    `device` is one device, or a function of the parameter name (a model split by device_map)."""
    device_of = device if callable(device) else lambda name: device
    class_name = type(model).__name__
    to_hub, from_hub = keymaps.layout_rules(class_name)
    params = dict(model.named_parameters(remove_duplicate=False))
    unexpected, mismatched, loaded = [], [], set()
    for ckpt_key, tensor in tensors:
        hub_key = keymaps.rename(ckpt_key, to_hub)
        key = keymaps.rename(hub_key, from_hub)
        if key not in params:
            if not keymaps.is_ignored(hub_key, class_name):
                unexpected.append(ckpt_key)
            continue
        if tuple(tensor.shape) != tuple(params[key].shape):
            mismatched.append(f"{ckpt_key}: checkpoint {tuple(tensor.shape)} vs model {tuple(params[key].shape)}")
            continue
        if tensor.is_floating_point():
            tensor = tensor.to(device=device_of(key), dtype=dtype)
        else:
            tensor = tensor.to(device=device_of(key))
        _set_parameter(model, key, tensor)
        loaded.add(key)

    model.tie_weights()
    missing = [name for name, p in model.named_parameters() if p.is_meta]
    fresh = [name for name in missing if name.startswith(getattr(model, "_keys_new_on_load", ()))]
    if fresh:  # e.g. a task head loaded from a generation checkpoint: its head starts random, as in transformers
        for name in fresh:
            _set_parameter(model, name, torch.empty(params[name].shape, dtype=dtype, device=device_of(name)))
        model.init_new_parameters(fresh)
        logger.warning("Some weights of %s were not initialized from the checkpoint at %s and are newly initialized: "
                       "%s. You should probably train this model on a downstream task before using it for "
                       "predictions.", class_name, where, fresh)
        missing = [name for name in missing if name not in fresh]
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint: {_short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected in the checkpoint: {_short_list(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {_short_list(mismatched)}")
    if problems:
        raise CheckpointMismatchError(f"{class_name} does not match the checkpoint in {where}: " + "; ".join(problems))
    stale = [name for name, b in model.named_buffers() if b.is_meta]
    if stale:
        raise RuntimeError(f"{class_name} registers buffers the loader cannot fill: {stale[:5]}")


def _set_parameter(model: nn.Module, key: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = key.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    old = getattr(module, attr)
    setattr(module, attr, nn.Parameter(tensor, requires_grad=old.requires_grad and tensor.is_floating_point()))


def _short_list(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" ... and {len(items) - limit} more" if len(items) > limit else "")


def _read_generation_config(path_or_repo_id: str | os.PathLike, config: PretrainedConfig, hub: dict[str, Any]):
    from llavakit.generation.config import GenerationConfig

    if resolve_optional(path_or_repo_id, "generation_config.json", **hub) is not None:
        return GenerationConfig.from_pretrained(path_or_repo_id, **hub)
    return GenerationConfig.from_model_config(config)
