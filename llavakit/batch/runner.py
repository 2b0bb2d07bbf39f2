"""The batch engine: loads a model and processor once, then answers lists of rows with greedy decoding.

Rows of one batch are rendered with the chat template, left-padded together and decoded in one
`generate` call; left padding keeps each row's greedy answer equal to answering it alone. A row whose
image or video cannot be loaded (or that has a video for a model without video support) is answered with its
error, and the rest of the batch goes on. Videos are sampled to `num_frames` evenly spaced frames. With a JSON schema,
decoding is constrained to it (generation/structured.py) and each result also carries the parsed "json".
"""

from __future__ import annotations

import json
from typing import Any

import torch

from llavakit.batch.images import load_image
from llavakit.serving.media import MediaLimits

DEFAULT_PROMPT = "What is in the image?"
DEFAULT_NUM_FRAMES = 8


class BatchEngine:
    """Answers rows {"id", "images", "prompt"} (and "videos" for video models) with result dicts; one instance per
    process (or Ray actor)."""

    def __init__(self, model: str, *, prompt: str = DEFAULT_PROMPT, chat_template: str | None = None,
                 max_new_tokens: int = 64, dtype: str = "auto", device: str | None = None,
                 limits: MediaLimits | None = None, tensor_parallel: bool = False,
                 json_schema: dict | None = None, num_frames: int = DEFAULT_NUM_FRAMES) -> None:
        from llavakit import AutoModelForImageTextToText, AutoProcessor

        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
        self.num_frames = num_frames
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # tensor_parallel: this rank's slice of the model, on its own device (inside torchrun)
        placement = {"tp_plan": "auto"} if tensor_parallel else {"device_map": self.device}
        self.processor = AutoProcessor.from_pretrained(model)
        self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype, **placement).eval()
        self.prompt, self.chat_template, self.max_new_tokens = prompt, chat_template, max_new_tokens
        self.limits = limits or MediaLimits()
        self.json_schema = json_schema
        if json_schema is not None:
            from llavakit.generation.structured import JSONSchemaLogitsProcessor

            self.constrain = JSONSchemaLogitsProcessor(json_schema, self.processor.tokenizer, self.model)

    def run(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One result per row, in the rows' order: id, image(s), prompt, answer, token counts, error."""
        results, ready = [], []
        for row in rows:
            result = {"id": row["id"], "images": row["images"], "prompt": row.get("prompt") or self.prompt,
                      "answer": None, "prompt_tokens": 0, "completion_tokens": 0, "error": None}
            if row.get("videos"):
                result["videos"] = row["videos"]
            if self.json_schema is not None:
                result["json"] = None
            results.append(result)
            try:
                images = [load_image(source, self.limits) for source in row["images"]]
                videos = [self._load_video(source) for source in row.get("videos") or []]
                ready.append((result, self._render(result["prompt"], len(images), len(videos)), images, videos))
            except ValueError as err:
                result["error"] = str(err)
        if ready:
            try:
                self._generate(ready)
            except (ValueError, RuntimeError) as err:
                if len(ready) == 1:
                    ready[0][0]["error"] = str(err)
                else:  # find the row that broke the batch: answer each alone
                    for item in ready:
                        try:
                            self._generate([item])
                        except (ValueError, RuntimeError) as single_err:
                            item[0]["error"] = str(single_err)
        return results

    def _load_video(self, source: str) -> Any:
        """(num_frames, H, W, 3) uint8 frames of one row's video; ValueError when the model has no video path or
        the video cannot be read."""
        from llavakit.models.llava import VIDEO_FAMILIES
        from llavakit.processing.video import load_video

        if not hasattr(self.model, "get_video_features") or getattr(self.processor, "video_processor", None) is None:
            raise ValueError(f"this row has a video but the model ({self.model.config.model_type}) does not take "
                             f"videos; use a video model: {VIDEO_FAMILIES}")
        frames, _ = load_video(source, num_frames=self.num_frames)  # (num_frames, H, W, 3)
        return frames

    def _render(self, prompt: str, n_images: int, n_videos: int = 0) -> str:
        content = ([{"type": "image"} for _ in range(n_images)] + [{"type": "video"} for _ in range(n_videos)]
                   + [{"type": "text", "text": prompt}])
        return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                  chat_template=self.chat_template)

    def _generate(self, ready: list[tuple[dict[str, Any], str, list[Any], list[Any]]]) -> None:
        """Answer the rows in one left-padded generate call and fill in their results."""
        texts = [text for _, text, _, _ in ready]
        images = [image for _, _, row_images, _ in ready for image in row_images]
        videos = [video for _, _, _, row_videos in ready for video in row_videos]
        bos = self.processor.tokenizer.bos_token
        media = {"videos": videos} if videos else {}  # image-only processors take no videos argument
        inputs = self.processor(images=images or None, text=texts, padding=True, padding_side="left",
                                return_tensors="pt", add_special_tokens=not (bos and texts[0].startswith(bos)), **media)
        inputs = inputs.to(self.model.device, self.model.dtype)
        constrain = [self.constrain] if self.json_schema is not None else None
        output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                     prefix_cache=False, logits_processor=constrain)  # (B, T + new)
        new = output[:, inputs["input_ids"].shape[1]:].tolist()  # (B, new)
        prompt_tokens = inputs["attention_mask"].sum(-1).tolist()  # (B,)
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        for (result, _, _, _), ids, n_prompt in zip(ready, new, prompt_tokens):
            ids = ids[:next((i + 1 for i, t in enumerate(ids) if t in eos_ids), len(ids))]
            result["answer"] = self.processor.decode(ids, skip_special_tokens=True).strip()
            result["prompt_tokens"], result["completion_tokens"] = int(n_prompt), len(ids)
            result["error"] = None
            if self.json_schema is not None:
                self._parse(result, ended=bool(ids) and ids[-1] in eos_ids)

    def _parse(self, result: dict[str, Any], ended: bool) -> None:
        """Fill in "json": the constrained answer parses unless max_new_tokens cut it short (then an error)."""
        if not ended:
            result["error"] = (f"the JSON answer was cut at --max-new-tokens {self.max_new_tokens} before it was "
                               "complete; raise it")
            return
        result["json"] = json.loads(result["answer"])
