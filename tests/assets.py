"""Build the real assets the tests use: the Mistral-7B tokenizer, skimage photos, tiny llava-hf checkpoints.

Everything here runs transformers (a test-only dependency) to produce reference files, exactly as a
user's checkpoint folder would look. The fixtures in conftest.py call these once per session.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

# A llava-1.5 style template (USER: / ASSISTANT:, images before text in each message), written for
# these tests; it renders the same text as the llava-1.5-7b-hf checkpoint's template.
LLAVA_15_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for part in message['content'] if part['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] + ' ' }}{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

TINY_VISION = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                   num_attention_heads=4, image_size=28, patch_size=7, projection_dim=16)
TINY_TEXT = dict(vocab_size=32064, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5)
IMAGE_TOKENS = (28 // 7) ** 2  # 16 tokens per image with the "default" strategy (CLS dropped)
NEXT_CROP = 28
NEXT_PINPOINTS = [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]]  # every aspect ratio of the 1.6 defaults
VIP_VISION_LAYERS = 10  # deep enough for ViP's default layer list [-2, -5, -8, -11, 6]
VIP_PROCESSOR_FILES = ("processor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def photos_dir() -> Path:
    import skimage

    return Path(os.path.dirname(skimage.__file__)) / "data"


def build_mistral_tokenizer(out_dir: Path) -> Path:
    """Mistral-7B v0.1 SentencePiece model from mistral-common -> tokenizer.json, plus <image> and <pad>."""
    import mistral_common
    import transformers

    src = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    raw = out_dir / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, raw / "tokenizer.model")
    (raw / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "legacy": False,
    }))
    tok = transformers.AutoTokenizer.from_pretrained(raw)
    tok.add_tokens(["<image>"], special_tokens=True)
    tok.add_special_tokens({"pad_token": "<pad>"})
    assert tok.convert_tokens_to_ids(["<image>", "<pad>"]) == [32000, 32001]
    final = out_dir / "tokenizer"
    tok.save_pretrained(final)
    shutil.rmtree(raw)
    return final


def perturb_(model: torch.nn.Module, seed: int = 0) -> None:
    """Move every parameter off its init value, so a skipped norm weight or bias shows in parity tests."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def build_tiny_llava(out_dir: Path, tokenizer_dir: Path, *, text_model_type: str = "llama", seed: int = 0,
                     **config_overrides) -> Path:
    """A tiny random LlavaForConditionalGeneration + LlavaProcessor, saved by transformers 5 as it is."""
    import transformers

    torch.manual_seed(seed)
    text = dict(TINY_TEXT, model_type=text_model_type)
    if text_model_type == "mistral":
        text["sliding_window"] = config_overrides.pop("sliding_window", None)
    config = transformers.LlavaConfig(vision_config=dict(TINY_VISION), text_config=text, image_token_index=32000,
                                      pad_token_id=32001, **config_overrides)
    model = transformers.LlavaForConditionalGeneration(config).eval()
    perturb_(model, seed)
    model.save_pretrained(out_dir)

    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    image_processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    processor = transformers.LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=7,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1, chat_template=LLAVA_15_TEMPLATE,
    )
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_llava_next(out_dir: Path, tokenizer_dir: Path, seed: int = 0, text_overrides: dict | None = None,
                          **config_overrides) -> Path:
    """A tiny random LlavaNextForConditionalGeneration + LlavaNextProcessor (crop 28, patch 7), saved by transformers 5."""
    import transformers

    torch.manual_seed(seed)
    text = dict(TINY_TEXT, model_type="llama")
    text.update(text_overrides or {})
    config = transformers.LlavaNextConfig(
        vision_config=dict(TINY_VISION), text_config=text,
        image_token_index=32000, pad_token_id=32001, image_grid_pinpoints=NEXT_PINPOINTS, **config_overrides)
    model = transformers.LlavaNextForConditionalGeneration(config).eval()
    perturb_(model, seed)
    model.save_pretrained(out_dir)
    image_processor = transformers.LlavaNextImageProcessorPil(
        size={"shortest_edge": NEXT_CROP}, crop_size={"height": NEXT_CROP, "width": NEXT_CROP},
        image_grid_pinpoints=NEXT_PINPOINTS)
    processor = transformers.LlavaNextProcessor(
        image_processor=image_processor, tokenizer=transformers.AutoTokenizer.from_pretrained(tokenizer_dir),
        patch_size=7, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=LLAVA_15_TEMPLATE)
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_vipllava(out_dir: Path, processor_src: Path, seed: int = 0, **config_overrides) -> Path:
    """A tiny random ViP-LLaVA saved by transformers 5, with the tiny LLaVA's processor files beside it."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.VipLlavaConfig(
        vision_config=dict(TINY_VISION, num_hidden_layers=VIP_VISION_LAYERS),
        text_config=dict(TINY_TEXT, model_type="llama"), image_token_index=32000, pad_token_id=32001,
        **config_overrides)
    model = transformers.VipLlavaForConditionalGeneration(config).eval()
    perturb_(model, seed)
    model.save_pretrained(out_dir)
    for name in VIP_PROCESSOR_FILES:
        shutil.copy(processor_src / name, out_dir / name)
    return out_dir


def to_hub_layout(src: Path, dst: Path, *, max_shard_bytes: int = 2_000_000) -> Path:
    """Rewrite a transformers-5 folder the way the published llava-hf repos look.

    Vision keys gain the `vision_model.` level, weights are sharded with an index, config.json is
    sparse (only non-default text/vision keys, legacy `rope_theta`, `torch_dtype`), and the
    processor files are the older preprocessor_config.json + chat_template.json pair.
    """
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    tensors = load_file(src / "model.safetensors")
    renamed = {}
    for key, value in tensors.items():
        if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
            key = "vision_tower.vision_model." + key.removeprefix("vision_tower.")
        renamed[key] = value

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(renamed):
        nbytes = renamed[key].numel() * renamed[key].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = renamed[key]
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, dst / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in renamed.values())
    (dst / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))

    full = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(sparse_hub_config(full), indent=2))
    for name in ("generation_config.json", "tokenizer.json"):
        if (src / name).exists():
            shutil.copy(src / name, dst / name)

    # Older processor files: preprocessor_config.json, chat_template.json, tokenizer_config.json with
    # added_tokens_decoder, and special_tokens_map.json.
    processor = json.loads((src / "processor_config.json").read_text())
    image_proc = processor.pop("image_processor")
    processor.pop("tokenizer", None)
    (dst / "preprocessor_config.json").write_text(json.dumps(image_proc, indent=2))
    (dst / "processor_config.json").write_text(json.dumps(processor, indent=2))
    template = (src / "chat_template.jinja").read_text()
    (dst / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    tok_config = json.loads((src / "tokenizer_config.json").read_text())
    tok_config.update({
        "add_bos_token": True, "add_eos_token": False, "padding_side": "left", "legacy": False,
        "added_tokens_decoder": {
            str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                     "special": True}
            for i, c in [(0, "<unk>"), (1, "<s>"), (2, "</s>"), (32000, "<image>"), (32001, "<pad>")]
        },
    })
    tok_config.pop("extra_special_tokens", None)
    (dst / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    (dst / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}, indent=2))
    return dst


def sparse_hub_config(full: dict) -> dict:
    """Drop sub-config keys equal to their class defaults, as the Hub's llava-1.5 config.json does."""
    import transformers

    sparse = {k: v for k, v in full.items() if k not in ("text_config", "vision_config", "dtype")}
    sparse["torch_dtype"] = full.get("dtype", "float32")
    for key, cls in (("text_config", transformers.CONFIG_MAPPING[full["text_config"]["model_type"]]),
                     ("vision_config", transformers.CLIPVisionConfig)):
        defaults = cls().to_dict()
        sub = {k: v for k, v in full[key].items() if k == "model_type" or defaults.get(k) != v}
        sub.pop("transformers_version", None)
        if key == "text_config":
            rope = sub.pop("rope_parameters", None) or full[key].get("rope_parameters") or {}
            if rope.get("rope_theta", 10000.0) != 10000.0:
                sub["rope_theta"] = rope["rope_theta"]
            sub.pop("head_dim", None)
        sparse[key] = sub
    return sparse


# ---- video-capable families (model checkpoints only; the processor files come from the processor tests) ----
TINY_SIGLIP = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                   num_attention_heads=4, image_size=28, patch_size=7, vision_use_head=False)
VIDEO = 32002  # the <video> token id of the tiny video checkpoints (<image> 32000, <pad> 32001)
# OneVision's 384-px canvases scaled to 28 px crops, up to 3x3: a 3x3 grid has 12x12 = 144 features, over
# anyres_max_4's 64, so it takes the shrink path; a 1x2 grid (4x8 = 32) does not.
ONEVISION_PINPOINTS = [[28 * h, 28 * w] for h in range(1, 4) for w in range(1, 4)]
ONEVISION_ASPECT = "anyres_max_4"


def build_tiny_llava_onevision(out_dir: Path, seed: int = 0, text_overrides: dict | None = None,
                               **config_overrides) -> Path:
    """A tiny random LlavaOnevisionForConditionalGeneration (SigLIP 28 px / patch 7, Qwen2), saved by transformers."""
    import transformers

    torch.manual_seed(seed)
    text = dict(TINY_TEXT, model_type="qwen2", **(text_overrides or {}))
    settings = dict(image_token_index=32000, video_token_index=VIDEO, pad_token_id=32001,
                    image_grid_pinpoints=ONEVISION_PINPOINTS, vision_aspect_ratio=ONEVISION_ASPECT)
    settings.update(config_overrides)
    config = transformers.LlavaOnevisionConfig(vision_config=dict(TINY_SIGLIP), text_config=text, **settings)
    model = transformers.LlavaOnevisionForConditionalGeneration(config).eval()
    perturb_(model, seed)
    model.save_pretrained(out_dir)
    return out_dir


def build_tiny_llava_next_video(out_dir: Path, seed: int = 0, text_overrides: dict | None = None,
                                **config_overrides) -> Path:
    """A tiny random LlavaNextVideoForConditionalGeneration (CLIP 28 px / patch 7, Llama), saved by transformers."""
    import transformers

    torch.manual_seed(seed)
    text = dict(TINY_TEXT, model_type="llama", **(text_overrides or {}))
    settings = dict(image_token_index=32000, video_token_index=VIDEO, pad_token_id=32001,
                    image_grid_pinpoints=NEXT_PINPOINTS)
    settings.update(config_overrides)
    config = transformers.LlavaNextVideoConfig(vision_config=dict(TINY_VISION), text_config=text, **settings)
    model = transformers.LlavaNextVideoForConditionalGeneration(config).eval()
    perturb_(model, seed)
    model.save_pretrained(out_dir)
    return out_dir


# ---- video families: processors and clips (the models' builders live beside the other checkpoints) ----
# Templates written for these tests that render the same text as the llava-hf OneVision and LLaVA-NeXT-Video
# checkpoints' templates: every image, then every video placeholder, then the texts.
ONEVISION_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for part in message['content'] if part['type'] == 'image' %}{{ '<image>' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'video' %}{{ '<video>' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ '\n' + part['text'] }}{% endgeneration %}"
    "{% else %}{{ '\n' + part['text'] }}{% endif %}{% endfor %}"
    "{{ '<|im_end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
NEXT_VIDEO_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for part in message['content'] if part['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'video' %}{{ '<video>\n' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ part['text'] + ' ' }}{% endgeneration %}"
    "{% else %}{{ part['text'] + ' ' }}{% endif %}{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
VIDEO_TOKEN = 32002  # <video> in the video tokenizer (the Mistral tokenizer + <image>, <pad>, <video>)
OV_SIZE = 28  # tiny OneVision: 28-px views, patch 7 -> 16 patches per view (num_image_tokens)
OV_PINPOINTS = [[OV_SIZE * rows, OV_SIZE * cols] for rows in range(1, 4) for cols in range(1, 4)]


def transformers_decodes_video() -> bool:
    """transformers reads video files only through torchcodec (torchvision's reader is gone): the parity tests
    that decode a file on both sides need it usable (installed, matching torch, FFmpeg present)."""
    from transformers.utils import is_torchcodec_usable

    return is_torchcodec_usable(decode="video")


def build_video_tokenizer(out_dir: Path, tokenizer_dir: Path) -> Path:
    """The test tokenizer with `<video>` added as id 32002."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.add_tokens(["<video>"], special_tokens=True)
    assert tok.convert_tokens_to_ids("<video>") == VIDEO_TOKEN
    tok.save_pretrained(out_dir)
    return out_dir


def onevision_processor(tokenizer_dir: Path, **overrides):
    """transformers' tiny LlavaOnevisionProcessor (PIL image backend): 28-px views, 16 patches per view."""
    import transformers
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import \
        LlavaOnevisionImageProcessorPil

    size = {"height": OV_SIZE, "width": OV_SIZE}
    settings = dict(num_image_tokens=(OV_SIZE // 7) ** 2, vision_feature_select_strategy="full",
                    chat_template=ONEVISION_TEMPLATE)
    settings.update(overrides)
    return transformers.LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessorPil(size=size, image_grid_pinpoints=OV_PINPOINTS),
        tokenizer=transformers.AutoTokenizer.from_pretrained(tokenizer_dir),
        video_processor=transformers.LlavaOnevisionVideoProcessor(size=size), **settings)


def next_video_processor(tokenizer_dir: Path, **overrides):
    """transformers' tiny LlavaNextVideoProcessor: 28-px crops and frames, patch 7, the NeXT test pinpoints."""
    import transformers
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    settings = dict(patch_size=7, vision_feature_select_strategy="default", num_additional_image_tokens=1,
                    chat_template=NEXT_VIDEO_TEMPLATE)
    settings.update(overrides)
    crop = {"height": NEXT_CROP, "width": NEXT_CROP}
    return transformers.LlavaNextVideoProcessor(
        video_processor=transformers.LlavaNextVideoVideoProcessor(size={"shortest_edge": NEXT_CROP}, crop_size=crop),
        image_processor=LlavaNextImageProcessorPil(size={"shortest_edge": NEXT_CROP}, crop_size=crop,
                                                   image_grid_pinpoints=NEXT_PINPOINTS),
        tokenizer=transformers.AutoTokenizer.from_pretrained(tokenizer_dir), **settings)


def save_processor_hub_layout(processor, out_dir: Path, *, video_file: bool) -> Path:
    """Save a processor as the llava-hf video repos have it: preprocessor_config.json for the image processor,
    the video settings in video_preprocessor_config.json (video_file) or only in preprocessor_config.json,
    processor_config.json with the processor's own keys, chat_template.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(out_dir)  # transformers 5: everything nested in processor_config.json
    nested = json.loads((out_dir / "processor_config.json").read_text())
    image = nested.pop("image_processor")
    video = nested.pop("video_processor")
    image["processor_class"] = nested["processor_class"]
    (out_dir / "preprocessor_config.json").write_text(json.dumps(image, indent=2))
    if video_file:
        (out_dir / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))
    (out_dir / "processor_config.json").write_text(json.dumps(nested, indent=2))
    template = out_dir / "chat_template.jinja"
    (out_dir / "chat_template.json").write_text(json.dumps({"chat_template": template.read_text()}))
    template.unlink()
    return out_dir


def write_h264_clip(path: Path, num_frames: int = 25, height: int = 64, width: int = 96, fps: int = 10,
                    faststart: bool = False) -> Path:
    """An H.264 mp4 (yuv420p) of a real photo panning: astronaut crops moving down and right each frame;
    faststart puts the index (moov) before the frames, as streaming sites do."""
    import av
    import skimage.data

    photo = skimage.data.astronaut()  # (512, 512, 3) uint8
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            crop = photo[i * 4:i * 4 + height, i * 6:i * 6 + width]
            frame = av.VideoFrame.from_ndarray(crop.copy(), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
