"""Small pieces the model files share: RMSNorm, activations, attention, masks, logit slicing, loss, init."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
FLASH_HELP = "flash_attention_2 needs the flash-attn package and a CUDA GPU: pip install flash-attn"


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 and cast back before the weight (as Llama does)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation of OpenAI's CLIP."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


# config `hidden_act` / `projector_hidden_act` name -> activation module (none has parameters)
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "quick_gelu": QuickGELU,
    "gelu": nn.GELU,  # exact erf GELU
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def attn_implementation(config) -> str:
    """'sdpa' (default), 'eager' or 'flash_attention_2', from `config._attn_implementation` (set by from_pretrained)."""
    name = getattr(config, "_attn_implementation", None) or "sdpa"
    if name not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation {name!r} is not available; choose one of {ATTN_IMPLEMENTATIONS}")
    return name


def _flash_attn_func() -> Callable | None:
    """flash_attn.flash_attn_func when the flash-attn package is installed, else None."""
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None
    return flash_attn_func


def check_flash_attention() -> None:
    """Raise a clear error unless flash-attn is installed and a CUDA GPU is present (from_pretrained calls this)."""
    if _flash_attn_func() is None or not torch.cuda.is_available():
        raise ImportError(FLASH_HELP)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, KV, T, D) -> (B, KV * n_rep, T, D): each key/value head serves n_rep query heads (GQA)."""
    if n_rep == 1:
        return x
    b, kv, t, d = x.shape
    return x[:, :, None].expand(b, kv, n_rep, t, d).reshape(b, kv * n_rep, t, d)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, *, scale: float,
              eager: bool, is_causal: bool = False, dropout: float = 0.0,
              flash: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention with grouped KV heads.

    q (B, H, Tq, D), k/v (B, KV, Tk, D); `mask` is None, a bool mask (True = attend, for sdpa) or an
    additive float mask (for eager), broadcastable to (B, H, Tq, Tk). Returns the output (B, Tq, H, D)
    and, on the eager path, the attention probabilities (B, H, Tq, Tk). `flash` runs flash-attn's kernel
    when no mask is needed (causal is bottom-right aligned, so a cached prefix works); masked calls
    (padding, a StaticCache's unfilled slots) take the SDPA path.
    """
    n_rep = q.shape[1] // k.shape[1]
    if flash and not eager and mask is None:
        return _flash(q, k, v, scale=scale, is_causal=is_causal, dropout=dropout), None
    if eager:
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        scores = torch.matmul(q, k.transpose(2, 3)) * scale  # (B, H, Tq, Tk)
        if mask is not None:
            if mask.dtype == torch.bool:
                mask = torch.zeros(mask.shape, dtype=scores.dtype, device=mask.device).masked_fill(
                    ~mask, torch.finfo(scores.dtype).min)
            scores = scores + mask
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        probs = F.dropout(probs, p=dropout, training=dropout > 0)
        return torch.matmul(probs, v).transpose(1, 2), probs
    gqa = {}
    if n_rep > 1:
        if mask is None:
            gqa = {"enable_gqa": True}
        elif q.shape[2] == 1 and mask.shape[1] == 1 and mask.shape[2] == 1:
            # one query per row (decode): the n_rep heads sharing a KV head become that head's n_rep queries,
            # so the keys/values are read once instead of being copied n_rep times
            B, H, _, D = q.shape
            q = q.reshape(B, H // n_rep, n_rep, D)  # (B, KV, n_rep, D)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale)
            return out.reshape(B, 1, H, D), None  # (B, Tq=1, H, D)
        else:
            k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale,
                                         is_causal=is_causal and mask is None, **gqa)
    return out.transpose(1, 2), None  # (B, Tq, H, D)


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, is_causal: bool,
           dropout: float) -> torch.Tensor:
    """flash-attn on (B, H, T, D) inputs; returns (B, Tq, H, D). Grouped KV heads are native to the kernel."""
    flash_attn_func = _flash_attn_func()
    if flash_attn_func is None:
        raise ImportError(FLASH_HELP)
    if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"flash_attention_2 runs on CUDA in float16/bfloat16, got {q.device.type} {q.dtype}: "
                         "load with dtype=torch.bfloat16 and device_map='cuda', or use attn_implementation='sdpa'")
    return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout,
                           softmax_scale=scale, causal=is_causal)  # (B, Tq, H, D)


def causal_mask(attention_mask: torch.Tensor | None, *, batch_size: int, q_len: int, past_len: int,
                dtype: torch.dtype, device: torch.device, eager: bool, sliding_window: int | None = None,
                segments: torch.Tensor | None = None) -> torch.Tensor | None:
    """The decoder's attention mask, (B, 1, Tq, Tk) with Tk = past_len + q_len, or None for plain causal.

    `attention_mask` is the 2-D 0/1 padding mask (B, Tk). A query at cache index i sees key j when
    j <= i, j > i - sliding_window (if set), the key is not padding, and (packed sequences) both lie
    in the same segment. sdpa gets a bool mask, or None when `is_causal` alone is exact; eager gets an
    additive float mask (0 / dtype min), so fully padded rows attend uniformly instead of giving NaN.
    """
    kv_len = past_len + q_len
    padding = None
    if attention_mask is not None:
        padding = attention_mask.to(device=device, dtype=torch.bool)
        if bool(padding.all()):
            padding = None
    if not eager and padding is None and segments is None:
        window_matters = sliding_window is not None and kv_len >= sliding_window
        if not window_matters and (q_len == 1 or q_len == kv_len):
            return None

    q_idx = torch.arange(q_len, device=device)[:, None] + past_len  # (Tq, 1)
    kv_idx = torch.arange(kv_len, device=device)[None, :]  # (1, Tk)
    allowed = (kv_idx <= q_idx)[None, None]  # (1, 1, Tq, Tk)
    if sliding_window is not None:
        allowed = allowed & (kv_idx > q_idx - sliding_window)
    if padding is not None:
        allowed = allowed & padding[:, None, None, :]
    if segments is not None:  # (B, T), only without a cache, so Tq == Tk
        allowed = allowed & (segments[:, None, :, None] == segments[:, None, None, :])
    allowed = allowed.expand(batch_size, 1, q_len, kv_len)
    if not eager:
        return allowed
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def packed_segments(position_ids: torch.Tensor) -> torch.Tensor | None:
    """Segment index per token when position_ids restart inside a row (packed sequences), else None."""
    step = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1)
    segments = (step != 1).cumsum(-1)  # (B, T)
    return None if bool((segments[:, -1] == 0).all()) else segments


def keep_positions(hidden: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """Slice (B, T, H) before the LM head: int k keeps the last k (0 = all); a tensor lists positions.

    A 1-D tensor selects the same positions in every row; 2-D integers select per row; a 2-D bool mask
    keeps its True positions, flattened to (N, H).
    """
    if isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.ndim == 2:
        if logits_to_keep.dtype == torch.bool:
            return hidden[logits_to_keep]
        return torch.take_along_dim(hidden, logits_to_keep[..., None], dim=1)
    if isinstance(logits_to_keep, int):
        if logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be >= 0, got {logits_to_keep}")
        return hidden[:, -logits_to_keep:, :]  # -0 == 0 keeps everything
    return hidden[:, logits_to_keep, :]


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100,
                   num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross entropy: logits[t] is scored against labels[t+1], in float32.

    Mean over non-ignored labels, or sum / num_items_in_batch when given (gradient accumulation).
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"labels {tuple(labels.shape)} must match the logits' positions "
                         f"{tuple(logits.shape[:-1])}; pass logits_to_keep=0 when computing a loss")
    logits = logits.float()
    targets = F.pad(labels, (0, 1), value=ignore_index)[..., 1:].to(logits.device)  # (B, T)
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore_index,
                           reduction=reduction)
    if num_items_in_batch is not None:
        loss = loss / (num_items_in_batch.to(loss.device) if torch.is_tensor(num_items_in_batch)
                       else num_items_in_batch)
    return loss


@torch.no_grad()
def normal_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """tensor.normal_(0, std), skipped on the meta device (no values to fill; see init_weights)."""
    return tensor if tensor.is_meta else tensor.normal_(0.0, std)


@torch.no_grad()
def init_weights(model: nn.Module, std: float, skip: tuple[type, ...] = ()) -> None:
    """Random init for a freshly built model: normal(0, std) for linear/conv/embedding weights, zero
    biases, ones/zeros for norms. Submodules of a type in `skip` (models that initialised themselves)
    are left alone. Meta-device modules (from_pretrained builds there, then loads) are skipped: they hold
    no values, and normal_ on meta costs seconds (it imports torch._dynamo).
    """
    if any(p.is_meta for p in model.parameters()):
        return
    stack = list(model.children())
    while stack:
        module = stack.pop()
        if isinstance(module, skip):
            continue
        stack.extend(module.children())
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
            module.weight.normal_(0.0, std)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, (nn.LayerNorm, RMSNorm)):
            module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
