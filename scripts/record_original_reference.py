"""Record what the original LLaVA code prints and computes, for tests/loading/original_reference.json.

The reference is the released original code: llava-torch 1.2.2.post1 (haotian-liu/LLaVA), run with the
transformers it was written for (4.37.2, slow LlamaTokenizer from the SentencePiece model). Its pins are
too old for CI, so this script is run once by hand and its output committed:

    pip download llava-torch==1.2.2.post1 --no-deps -d /tmp/llava && unzip /tmp/llava/*.whl -d /tmp/llava/src
    python -m venv --system-site-packages /tmp/venv437
    /tmp/venv437/bin/pip install transformers==4.37.2 "tokenizers<0.19" sentencepiece protobuf
    /tmp/venv437/bin/python scripts/record_original_reference.py --llava-src /tmp/llava/src

It records, from the original functions themselves:
- prompts: `conv_templates[mode].get_prompt()` for several conversations per conv mode;
- ids: `tokenizer_image_token(prompt, tokenizer)` with the slow LlamaTokenizer (legacy False and True; the
  v1.5 / vicuna path, `use_fast=False`) and with 4.37's LlamaTokenizerFast (the mistral path of
  `load_pretrained_model`, `use_fast` left on), the SentencePiece model being mistral-common's
  Mistral-7B tokenizer.model.v1 (the tests' stand-in for the Llama / Mistral tokenizer.model);
- anyres: `select_best_resolution` / `get_anyres_image_grid_shape` and the image feature count of
  `prepare_inputs_labels_for_multimodal` (with the original `unpad_image`) for several image sizes;
- pixels: `process_images` (image_aspect_ratio "pad" and "anyres") with a 28 px CLIPImageProcessor,
  saved next to the JSON as original_pixels.npz.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "loading"
V16_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # llava-v1.6 config.json
TINY_PINPOINTS = [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]]  # the tests' tiny version (28 px tower)
SIZES = [[300, 200], [200, 300], [336, 336], [100, 100], [640, 427], [427, 640], [1000, 200], [30, 20], [50, 70],
         [20, 90]]  # (width, height), as PIL reports them

IMAGE_Q = [{"type": "image"}, {"type": "text", "text": "What is shown in this image?"}]
CONVERSATIONS = {
    "single": [{"role": "user", "content": IMAGE_Q}],
    "multi": [{"role": "user", "content": IMAGE_Q}, {"role": "assistant", "content": "A photo."},
              {"role": "user", "content": "Why is it red?"}],
    "system_multi": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": IMAGE_Q},
                     {"role": "assistant", "content": "A photo."}, {"role": "user", "content": "And then?"},
                     {"role": "assistant", "content": "Nothing."}, {"role": "user", "content": " Spaces  here "}],
    "text_only": [{"role": "user", "content": "Hello there"}],
}
CONV_MODES = ["llava_v1", "vicuna_v1", "v1", "llava_v0", "mistral_instruct", "llava_llama_2", "chatml_direct",
              "mistral_direct", "mpt"]
EXTRA_TEXTS = ["<image>\nWhat is this?", "USER: <image> Describe. ASSISTANT:", "<image><image>\nTwo", " leading",
               "A photo. </s>[INST] <image>\nQ [/INST]", "x</s> USER: y", "tab\tand\nnewline  two spaces",
               "Zürich 🚀 日本"]


def message_text(message: dict) -> str:
    """One message as the original CLI writes it: "<image>\\n" per image, then the text."""
    content = message["content"]
    if isinstance(content, str):
        return content
    images = sum(part["type"] == "image" for part in content)
    return "<image>\n" * images + "".join(part["text"] for part in content if part["type"] == "text")


def original_prompt(conv_templates, mode: str, messages: list[dict]) -> str:
    conv = conv_templates[mode].copy()
    if messages[0]["role"] == "system":
        text = message_text(messages[0])
        # MPT-style modes keep their "<|im_start|>system\n" header inside `system`
        conv.system = ("<|im_start|>system\n" + text) if conv.system.startswith("<|im_start|>system\n") else text
        messages = messages[1:]
    roles = {"user": conv.roles[0], "assistant": conv.roles[1]}
    for message in messages:
        conv.append_message(roles[message["role"]], message_text(message))
    conv.append_message(conv.roles[1], None)  # add_generation_prompt
    return conv.get_prompt()


def feature_count(image_size, pinpoints, tower_size: int, patch: int, unpad_image, grid_shape) -> int:
    """The image features prepare_inputs_labels_for_multimodal makes for one anyres image ("default" strategy)."""
    import torch

    side = tower_size // patch
    cols, rows = grid_shape(image_size, pinpoints, tower_size)
    grid = torch.zeros(1, rows * side, cols * side)  # (C, H, W) as the original permutes it
    grid = unpad_image(grid, image_size)
    return side * side + grid.shape[1] * (grid.shape[2] + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llava-src", required=True, help="folder holding the llava-torch 1.2.2.post1 `llava` package")
    parser.add_argument("--out", default=str(OUT_DIR))
    args = parser.parse_args()
    sys.path.insert(0, args.llava_src)

    import mistral_common
    import PIL.Image
    import skimage
    import transformers
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import get_anyres_image_grid_shape, process_images, select_best_resolution, \
        tokenizer_image_token
    from llava.model.llava_arch import unpad_image

    assert transformers.__version__ == "4.37.2", transformers.__version__
    spiece = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
    tokenizers = {"slow_legacy_false": transformers.LlamaTokenizer(spiece, legacy=False),
                  "slow_legacy_true": transformers.LlamaTokenizer(spiece, legacy=True),
                  "fast": transformers.LlamaTokenizerFast(vocab_file=spiece, legacy=False)}

    prompts = {mode: {name: original_prompt(conv_templates, mode, conv) for name, conv in CONVERSATIONS.items()}
               for mode in CONV_MODES}
    texts = sorted({p for by_conv in prompts.values() for p in by_conv.values()}) + EXTRA_TEXTS
    ids = {name: {text: tokenizer_image_token(text, tok) for text in texts} for name, tok in tokenizers.items()}

    anyres = []
    for pinpoints, tower, patch in ((V16_PINPOINTS, 336, 14), (TINY_PINPOINTS, 28, 7)):
        for size in SIZES:
            anyres.append({"pinpoints": pinpoints, "tower_size": tower, "patch_size": patch, "size_wh": size,
                           "best_wh": list(select_best_resolution(tuple(size), pinpoints)),
                           "features": feature_count(tuple(size), pinpoints, tower, patch, unpad_image,
                                                     get_anyres_image_grid_shape)})

    clip = transformers.CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    photos = Path(os.path.dirname(skimage.__file__)) / "data"
    images = {"rocket": PIL.Image.open(photos / "rocket.jpg").convert("RGB"),
              "astronaut_tall": PIL.Image.open(photos / "astronaut.png").convert("RGB").crop((100, 0, 260, 400)),
              "small_wide": PIL.Image.open(photos / "chelsea.png").convert("RGB").resize((30, 20))}
    pixels = {}
    for mode in ("pad", "anyres"):
        config = argparse.Namespace(image_aspect_ratio=mode, image_grid_pinpoints=TINY_PINPOINTS)
        for name, image in images.items():
            pixels[f"{mode}/{name}"] = process_images([image], clip, config)[0].numpy()

    out = Path(args.out)
    reference = {
        "source": "llava-torch 1.2.2.post1 (haotian-liu/LLaVA) with transformers 4.37.2; "
                  "scripts/record_original_reference.py",
        "image_token_index": IMAGE_TOKEN_INDEX, "conversations": CONVERSATIONS, "prompts": prompts, "ids": ids,
        "anyres": anyres, "images": {name: list(image.size) for name, image in images.items()},
    }
    (out / "original_reference.json").write_text(json.dumps(reference, indent=1, ensure_ascii=False) + "\n")
    np.savez_compressed(out / "original_pixels.npz", **pixels)
    print(f"wrote {out / 'original_reference.json'} and original_pixels.npz")


if __name__ == "__main__":
    main()
