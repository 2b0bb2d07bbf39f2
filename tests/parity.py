"""Small helpers the parity tests share: compare tensors, run both models, build image prompts."""

from __future__ import annotations

import torch

ATOL = 1e-5  # fp32 parity tolerance against transformers
IMAGE, PAD = 32000, 32001  # <image> and <pad> in the test tokenizer


def assert_close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    """Same shape and values within `atol` (no relative slack)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


def run_both(hf, ours, **inputs):
    """(transformers output, llavakit output) for the same inputs, without gradients."""
    with torch.no_grad():
        return hf(**inputs), ours(**inputs)


def image_prompt(n_images: int, seed: int = 0, per_image: int = 16) -> list[int]:
    """BOS, some text, then each image's `per_image` <image> tokens (16: the tiny CLIP's) and more text."""
    gen = torch.Generator().manual_seed(seed)
    ids = [1] + torch.randint(3, 31000, (3,), generator=gen).tolist()
    for _ in range(n_images):
        ids += [IMAGE] * per_image + torch.randint(3, 31000, (4,), generator=gen).tolist()
    return ids


def left_pad(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad to one length: input_ids, attention_mask and the mask-derived position_ids generate() uses."""
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def random_pixels(n: int, size: int = 28, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) standard-normal pixel values."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def generate_both(hf, ours, inputs: dict, max_new_tokens: int = 8) -> torch.Tensor:
    """Greedy generate with both models; asserts identical sequences that grew, and returns them."""
    with torch.no_grad():
        theirs = hf.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    mine = ours.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    assert mine.shape == theirs.shape and mine.shape[1] > inputs["input_ids"].shape[1]
    assert torch.equal(mine, theirs), (mine, theirs)
    return mine
