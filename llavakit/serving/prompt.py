"""Validated messages -> model inputs: fetch the images under the media rules, render the chat template,
run the processor, and keep each image's pixels and bytes hash for the shared feature cache."""

from __future__ import annotations

from typing import Any

from llavakit.serving import media
from llavakit.serving.engine import Prompt
from llavakit.serving.schemas import APIError, ChatRequest


def encode_chat(processor: Any, request: ChatRequest, limits: media.MediaLimits,
                chat_template: str | None = None) -> Prompt:
    """The chat's prompt with the chat template applied and a generation prompt added."""
    urls = [p["url"] for m in request.messages if isinstance(m["content"], list)
            for p in m["content"] if p["type"] == "image_url"]
    if len(urls) > limits.max_images:
        raise APIError(400, f"the request has {len(urls)} images, more than the {limits.max_images} allowed",
                       "messages")
    images = [media.load(url, limits) for url in urls]
    video_parts = [p for m in request.messages if isinstance(m["content"], list)
                   for p in m["content"] if p["type"] == "video_url"]
    if video_parts and getattr(processor, "video_processor", None) is None:
        raise APIError(400, f"this model ({type(processor).__name__}) does not take videos; video_url parts need "
                       "a LLaVA-OneVision or LLaVA-NeXT-Video model", "messages")
    if len(video_parts) > limits.max_videos:
        raise APIError(400, f"the request has {len(video_parts)} videos, more than the {limits.max_videos} "
                       "allowed", "messages")
    videos = [media.load_video(p["url"], limits, p.get("num_frames")) for p in video_parts]
    placeholder = {"image_url": {"type": "image"}, "video_url": {"type": "video"}}
    conversation = []
    for message in request.messages:
        content = message["content"]
        if isinstance(content, list):
            content = [placeholder.get(p["type"], p) for p in content]
        conversation.append({"role": message["role"], "content": content})
    try:
        text = processor.apply_chat_template(conversation, add_generation_prompt=True, chat_template=chat_template)
    except Exception as err:  # the template's own raise_exception (e.g. roles must alternate)
        raise APIError(400, f"the chat template refused the messages: {err}", "messages") from None
    return encode_text(processor, text, images, videos)


def encode_text(processor: Any, text: str, images: list[media.Image] | None = None,
                videos: list[media.Video] | None = None) -> Prompt:
    """Tokenize a rendered prompt (BOS added unless the text starts with it) and preprocess its images and videos."""
    bos = processor.tokenizer.bos_token
    special = not (bos is not None and text.startswith(bos))
    inputs = {"videos": [v.frames for v in videos]} if videos else {}  # image-only processors take no videos=
    try:
        out = processor(images=[i.pil for i in images] if images else None, text=text, return_tensors="pt",
                        add_special_tokens=special, **inputs)
    except ValueError as err:
        raise APIError(400, str(err), "messages") from None
    per_image = []
    sizes = out.get("image_sizes")
    for i, image in enumerate(images or []):
        per_image.append({"digest": image.digest, "pixel_values": out["pixel_values"][i:i + 1],
                          "image_sizes": sizes[i:i + 1] if sizes is not None else None})
    per_video = [{"digest": video.digest, "pixel_values_videos": out["pixel_values_videos"][i:i + 1]}
                 for i, video in enumerate(videos or [])]
    return Prompt(out["input_ids"], per_image, per_video)
