"""Weight-only quantized Linear layers: int8 per output channel and int4 in groups, activations stay float.

On CPU both use PyTorch's fused kernels (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`), which are
fast only for bfloat16 activations (in torch 2.13 their float32 paths are several times slower than a
float32 matmul), so inputs are cast to bfloat16 for the kernel and the output back. Elsewhere the weight is
dequantized on the fly and a plain matmul runs in the input's dtype: slower, but the memory saving holds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KERNEL_DTYPE = torch.bfloat16


class Int8WeightOnlyLinear(nn.Module):
    """y = x W^T + b with W stored as int8 (out, in) and one float32 scale per output channel (symmetric)."""

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)  # (N, K) int8
        self.register_buffer("scales", scales)  # (N,) float32
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8WeightOnlyLinear":
        w = linear.weight.detach().float()  # (N, K)
        scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # (N,)
        q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)  # (N, K)
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(q, scales, bias)

    def dequantize(self) -> torch.Tensor:
        return self.weight.float() * self.scales[:, None]  # (N, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            flat = x.reshape(-1, self.in_features).to(KERNEL_DTYPE)  # (M, K)
            y = torch._weight_int8pack_mm(flat, self.weight, self.scales.to(KERNEL_DTYPE))  # (M, N)
            y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias
        weight = self.weight.to(x.dtype) * self.scales.to(x.dtype)[:, None]  # (N, K)
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int4WeightOnlyLinear(nn.Module):
    """W stored as 4-bit values in groups of `group_size` inputs, each group with a scale and a zero point:
    w = (q - 8) * scale + zero, q in 0..15. On CPU the weight is kept in the fused kernel's packed layout."""

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, bias: torch.Tensor | None,
                 in_features: int, group_size: int, cpu_layout: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, packed.shape[0]
        self.group_size = group_size
        self.cpu_layout = cpu_layout
        self.register_buffer("weight", packed)  # (N, K / 2) uint8
        self.register_buffer("scales_and_zeros", scales_and_zeros)  # (K / group_size, N, 2) bfloat16
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int, name: str = "",
                    cpu_layout: bool | None = None) -> "Int4WeightOnlyLinear":
        """Quantize `linear`; the packed layout follows its device unless `cpu_layout` says otherwise."""
        n, k = linear.weight.shape
        if k % group_size:
            raise ValueError(f"cannot quantize {name or 'a Linear'} to int4: in_features={k} is not a multiple of "
                             f"group_size={group_size}; pass a group_size that divides it (32, 64, 128 or 256)")
        w = linear.weight.detach().float().reshape(n, k // group_size, group_size)  # (N, G, gs)
        low, high = w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True)  # (N, G, 1)
        scale = ((high - low) / 15.0).clamp(min=1e-12)
        q = torch.round((w - low) / scale).clamp(0, 15).to(torch.int32).reshape(n, k)  # (N, K) in 0..15
        zero = low + 8.0 * scale  # dequant: (q - 8) * scale + zero == q * scale + low
        scales_and_zeros = torch.cat([scale, zero], dim=-1).transpose(0, 1).contiguous().to(KERNEL_DTYPE)  # (G, N, 2)
        cpu_layout = linear.weight.device.type == "cpu" if cpu_layout is None else cpu_layout
        if cpu_layout:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)  # (N, K / 2) uint8, kernel layout
        else:
            packed = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)  # (N, K / 2): even index in the high nibble
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(packed, scales_and_zeros, bias, k, group_size, cpu_layout)

    def dequantize(self) -> torch.Tensor:
        if self.cpu_layout:  # multiplying the identity reads the packed layout back out
            eye = torch.eye(self.in_features, dtype=KERNEL_DTYPE, device=self.weight.device)
            return torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.weight, self.group_size,
                                                               self.scales_and_zeros).t().float()  # (N, K)
        q = torch.stack([self.weight >> 4, self.weight & 15], dim=-1).reshape(self.out_features, -1)  # (N, K)
        q = q.float().reshape(self.out_features, -1, self.group_size)  # (N, G, gs)
        scale, zero = self.scales_and_zeros.float().transpose(0, 1).unbind(-1)  # (N, G) each
        return ((q - 8.0) * scale[..., None] + zero[..., None]).reshape(self.out_features, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu") != self.cpu_layout:
            raise RuntimeError("this int4 layer was packed for %s but got input on %s; move the model to its device "
                               "before quantizing it" % ("cpu" if self.cpu_layout else "an accelerator", x.device))
        if self.cpu_layout:
            flat = x.reshape(-1, self.in_features).to(KERNEL_DTYPE)  # (M, K)
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.weight, self.group_size,
                                                           self.scales_and_zeros)  # (M, N)
            y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.dequantize().to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}, "
                f"bias={self.bias is not None}")
