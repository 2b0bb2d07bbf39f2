"""LlavaProcessor: prompts + images -> input_ids / attention_mask / pixel_values for a LLaVA model.

Each `<image>` in the text becomes N copies of the image token, N = the number of vision features the
model will scatter into those positions: (H // patch) * (W // patch) + num_additional_image_tokens,
minus 1 for the "default" strategy (which drops CLS).
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import re
from typing import Any

from llavakit.loading.hub import resolve_file
from llavakit.processing import chat_template as chat
from llavakit.processing.batch import BatchFeature
from llavakit.processing.image import CLIPImageProcessor, flatten_images, load_image, load_image_processor_dict
from llavakit.processing.templates import TEMPLATES, default_template_name
from llavakit.processing.tokenizer import AutoTokenizer, PreTrainedTokenizerFast, drop_transformers_only_kwargs, \
    read_chat_templates, save_chat_templates

logger = logging.getLogger(__name__)

PROCESSOR_NAME = "processor_config.json"
LEGACY_CHAT_TEMPLATE_FILE = "chat_template.json"
_TOKENIZER_KWARGS = ("return_attention_mask", "return_token_type_ids", "return_special_tokens_mask",
                     "return_offsets_mapping", "return_length", "pad_to_multiple_of", "verbose",
                     "split_special_tokens")


class LlavaProcessor:
    """Wraps a CLIPImageProcessor and a tokenizer; expands `<image>` placeholders to the model's feature count."""

    image_processor_class = CLIPImageProcessor  # what from_pretrained builds from preprocessor_config.json
    video_processor_class = None  # video models: what from_pretrained builds from the video processor config
    config_keys = ("patch_size", "vision_feature_select_strategy", "image_token", "num_additional_image_tokens")

    def __init__(self, image_processor: CLIPImageProcessor, tokenizer: PreTrainedTokenizerFast,
                 patch_size: int | None = None, vision_feature_select_strategy: str | None = None,
                 chat_template: str | dict | None = None, image_token: str = "<image>",
                 num_additional_image_tokens: int = 0):
        if image_processor is None or tokenizer is None:
            raise ValueError("LlavaProcessor needs both an image_processor and a tokenizer")
        if vision_feature_select_strategy not in (None, "default", "full"):
            raise ValueError("vision_feature_select_strategy must be 'default' or 'full', "
                             f"got {vision_feature_select_strategy!r}")
        if patch_size is not None and (not isinstance(patch_size, int) or patch_size < 1):
            raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.patch_size = patch_size
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.num_additional_image_tokens = num_additional_image_tokens
        self.chat_template = chat_template
        # a tokenizer may name its own image token (tokenizer_config.json "image_token")
        self.image_token = getattr(tokenizer, "image_token", None) or image_token
        token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f"the image token {self.image_token!r} is not in the tokenizer's vocabulary; add it with "
                             f"tokenizer.add_tokens([{self.image_token!r}], special_tokens=True)")
        self.image_token_id = token_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}:\n- image_processor: {self.image_processor!r}\n" \
               f"- tokenizer: {self.tokenizer!r}\n{json.dumps(self.to_dict(), indent=2, sort_keys=True)}"

    @property
    def model_input_names(self) -> list[str]:
        return list(self.image_processor.model_input_names) + list(self.tokenizer.model_input_names)

    def num_image_tokens(self, height: int, width: int) -> int:
        """How many `<image>` tokens one processed (height x width) image needs."""
        if self.patch_size is None:
            raise ValueError("patch_size is not set on this LlavaProcessor, so the number of image tokens is unknown; "
                             "pass patch_size= (the vision tower's patch size, e.g. 14)")
        count = (height // self.patch_size) * (width // self.patch_size) + self.num_additional_image_tokens
        if self.vision_feature_select_strategy == "default":
            count -= 1
        return count

    video_processor = None  # processors of video models set one
    video_token: str | None = None
    video_token_id: int | None = None

    # ---- calling ----------------------------------------------------------------------------------
    def __call__(self, images: Any = None, text: str | list[str] | None = None, videos: Any = None,
                 padding: bool | str = False, truncation: bool | str | None = None, max_length: int | None = None,
                 return_tensors: str | None = None, padding_side: str | None = None, add_special_tokens: bool = True,
                 **kwargs: Any) -> BatchFeature:
        """Tokenize prompts (expanding each `<image>` / `<video>`) and preprocess the images and videos,
        in one BatchFeature."""
        out, _ = self._process(images, text, videos=videos, padding=padding, truncation=truncation,
                               max_length=max_length, return_tensors=return_tensors, padding_side=padding_side,
                               add_special_tokens=add_special_tokens, **kwargs)
        return out

    def _process(self, images: Any, text: Any, *, return_tensors: str | None, videos: Any = None, **kwargs: Any
                 ) -> tuple[BatchFeature, list[list[tuple[int, int]]]]:
        """The call, also returning per sample the (placeholder end, chars added so far) of each expansion."""
        if videos is not None and self.video_processor is None:
            raise ValueError(f"{type(self).__name__} does not take videos (its model has no video input)")
        if images is None and text is None and videos is None:
            raise ValueError(f"{type(self).__name__} needs text, images, or both")
        image_kwargs = {k: kwargs[k] for k in list(kwargs) if k in self.image_processor.valid_kwargs}
        video_kwargs = {k: kwargs[k] for k in list(kwargs)
                        if self.video_processor is not None and k in self.video_processor.valid_kwargs}
        for key in set(image_kwargs) | set(video_kwargs):
            del kwargs[key]
        unknown = set(kwargs) - set(_TOKENIZER_KWARGS) - {"padding", "truncation", "max_length", "padding_side",
                                                          "add_special_tokens"}
        if unknown:
            raise TypeError(f"unexpected {type(self).__name__} arguments {sorted(unknown)}")
        flat = flatten_images(images) if images is not None else None
        flat = flat or None  # an empty list means no images

        texts = None
        if text is not None:
            texts = [text] if isinstance(text, str) else text
            if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
                raise ValueError("`text` must be a string or a list of strings")
            texts = list(texts)
            found = sum(t.count(self.image_token) for t in texts)
            if flat is not None and found != len(flat):
                raise ValueError(f"The total number of {self.image_token} tokens in the prompts should be the same as "
                                 f"the number of images passed. Found total {found} {self.image_token} tokens and "
                                 f"{len(flat)} images.")
            if flat is None and found:
                raise ValueError(f"Found {found} {self.image_token} tokens in the text but no images were passed.")
            if self.video_token is not None:
                self._check_video_placeholders(texts, videos)

        image_outputs = self._process_images(images, flat, image_kwargs) if flat is not None else {}
        video_outputs = self.video_processor(videos, **video_kwargs) if videos is not None else {}
        data: dict[str, Any] = {}
        shifts: list[list[tuple[int, int]]] = []
        if texts is not None:
            counts = {self.image_token: self._image_token_counts(
                image_outputs, image_kwargs.get("data_format") == "channels_last")}
            if video_outputs:
                counts[self.video_token] = self._video_token_counts(video_outputs)
            texts, shifts = self._expand(texts, counts)
            encoded = self._tokenize(texts, kwargs)
            self._check_image_tokens(texts, encoded["input_ids"], kwargs.get("max_length"))
            data.update(encoded)
        data.update(image_outputs)  # pixel_values (+ image_sizes for LLaVA-NeXT)
        data.update(video_outputs)  # pixel_values_videos
        return BatchFeature(data, tensor_type=return_tensors), shifts

    def _process_images(self, images: Any, flat: list[Any], image_kwargs: dict[str, Any]) -> dict[str, Any]:
        """Run the image processor (OneVision's needs the per-sample nesting of `images`, not the flat list)."""
        return self.image_processor(flat, **image_kwargs)

    def _check_video_placeholders(self, texts: list[str], videos: Any) -> None:
        """As many `<video>` placeholders in the prompts as videos passed."""
        from llavakit.processing.video import flatten_videos  # here: only video processors need it

        found = sum(t.count(self.video_token) for t in texts)
        if videos is not None:
            count = len(flatten_videos(videos))
            if found != count:
                raise ValueError(f"The total number of {self.video_token} tokens in the prompts should be the same as "
                                 f"the number of videos passed. Found total {found} {self.video_token} tokens and "
                                 f"{count} videos.")
        elif found:
            raise ValueError(f"Found {found} {self.video_token} tokens in the text but no videos were passed.")

    def _video_token_counts(self, video_outputs: dict[str, Any]) -> list[int]:
        """The `<video>` token count of each processed video, in order (video processors override this)."""
        raise NotImplementedError

    def _tokenize(self, texts: list[str], kwargs: dict[str, Any]) -> Any:
        """The expanded prompts -> input_ids / attention_mask (the processor of original checkpoints overrides it)."""
        return self.tokenizer(texts, **kwargs)

    def _image_token_counts(self, image_outputs: dict[str, Any], channels_last: bool) -> list[int]:
        """The `<image>` token count of each processed image, in order (subclasses read more than the shape)."""
        return [self.num_image_tokens(*(p.shape[:2] if channels_last else p.shape[-2:]))
                for p in image_outputs.get("pixel_values", [])]

    def _expand(self, texts: list[str], counts: dict[str, list[int]]
                ) -> tuple[list[str], list[list[tuple[int, int]]]]:
        """Replace the i-th occurrence of each placeholder token (across samples, in order) by counts[token][i]
        copies of it, e.g. {"<image>": [576, 576], "<video>": [1569]}."""
        queues = {token: iter(token_counts) for token, token_counts in counts.items()}
        pattern = re.compile("|".join(re.escape(t) for t in sorted(queues, key=len, reverse=True)))
        expanded, shifts = [], []
        for text in texts:
            out, sample_shifts, gained, end = [], [], 0, 0
            for match in pattern.finditer(text):
                token = match.group()
                n = next(queues[token])
                out.append(text[end:match.start()] + token * n)
                gained += len(token) * (n - 1)
                sample_shifts.append((match.end(), gained))
                end = match.end()
            out.append(text[end:])
            expanded.append("".join(out))
            shifts.append(sample_shifts)
        return expanded, shifts

    def _check_image_tokens(self, texts: list[str], input_ids: list[list[int]], max_length: int | None) -> None:
        """Truncation must not cut image tokens: the model needs one position per image feature."""
        for kind, token, token_id in (("image", self.image_token, self.image_token_id),
                                      ("video", self.video_token, self.video_token_id)):
            if token is None:
                continue
            in_text = [t.count(token) for t in texts]
            in_ids = [list(ids).count(token_id) for ids in input_ids]
            if in_text != in_ids:
                raise ValueError(
                    f"Mismatch in `{kind}` token count between text and `input_ids`: max_length={max_length} is too "
                    f"small for the {kind} tokens. Got ids={in_ids} and text={in_text} {kind} tokens per sample "
                    f"(each {kind} needs {token} x its feature count). Disable truncation or increase max_length.")

    # ---- chat templates ---------------------------------------------------------------------------
    def _resolve_template(self, chat_template: str | None) -> str:
        if chat_template is None:
            if isinstance(self.chat_template, dict):
                if "default" not in self.chat_template:
                    raise ValueError("this processor has several chat templates and none is 'default'; pass "
                                     f"chat_template= one of {sorted(self.chat_template)}")
                return self.chat_template["default"]
            if self.chat_template is not None:
                return self.chat_template
            name = default_template_name(None, getattr(self, "name_or_path", None))
            if not getattr(self, "_warned_default_template", False):
                logger.warning(f"this checkpoint has no chat template; using llavakit's built-in {name!r} template "
                               f"(choose another with chat_template=NAME)")
                self._warned_default_template = True
            return TEMPLATES[name]
        if isinstance(self.chat_template, dict) and chat_template in self.chat_template:
            return self.chat_template[chat_template]
        return TEMPLATES.get(chat_template, chat_template)

    def apply_chat_template(self, conversation: list, chat_template: str | None = None,
                            tools: list[dict] | None = None, documents: list[dict] | None = None,
                            add_generation_prompt: bool = False, continue_final_message: bool | str = False,
                            tokenize: bool = False, return_dict: bool = False, return_tensors: str | None = None,
                            return_assistant_tokens_mask: bool = False, processor_kwargs: dict | None = None,
                            **kwargs: Any) -> Any:
        """Render a conversation (or a batch) with the chat template; with tokenize=True also load its images
        and run the processor, returning input_ids (or the whole BatchFeature with return_dict=True).

        Keyword arguments the template does not read (padding, max_length, ...) go to the processor call.
        """
        if return_assistant_tokens_mask and not (tokenize and return_dict):
            raise ValueError("return_assistant_tokens_mask=True needs tokenize=True and return_dict=True")
        if return_assistant_tokens_mask and continue_final_message:
            raise ValueError("continue_final_message cannot be combined with return_assistant_tokens_mask")
        template = self._resolve_template(chat_template)
        template_names = chat.template_variables(template)
        call_kwargs = dict(processor_kwargs or {})
        call_kwargs.update({k: v for k, v in kwargs.items() if k not in template_names})
        template_kwargs = {k: v for k, v in kwargs.items() if k in template_names}

        conversations, batched = chat.split_conversations(conversation)
        conversations = [[_openai_image_blocks(m) for m in c] for c in conversations]
        texts, spans = chat.render(template, conversations, add_generation_prompt=add_generation_prompt,
                                   continue_final_message=continue_final_message, tools=tools, documents=documents,
                                   track_generation=return_assistant_tokens_mask,
                                   **{**self.tokenizer.special_tokens_map, **template_kwargs})
        if not tokenize:
            return texts if batched else texts[0]

        images = [_images_in(c) for c in conversations]  # per conversation: OneVision counts images per sample
        images = images if any(images) else None
        bos = self.tokenizer.bos_token
        if bos is not None and texts[0].startswith(bos):
            call_kwargs["add_special_tokens"] = False  # the template already wrote BOS
        if return_assistant_tokens_mask:
            call_kwargs["return_offsets_mapping"] = True
        videos = [video for c in conversations for video in _videos_in(c)]
        if videos and "do_sample_frames" not in call_kwargs and (
                call_kwargs.get("num_frames") is not None or call_kwargs.get("fps") is not None):
            call_kwargs["do_sample_frames"] = True  # num_frames= / fps= sample the decoded files
        out, shifts = self._process(images, texts if batched else texts[0], return_tensors=None,
                                    videos=videos or None, **call_kwargs)
        if return_assistant_tokens_mask:
            masks = []
            for offsets, sample_spans, sample_shifts in zip(out.pop("offset_mapping"), spans, shifts):
                ends = [end for end, _ in sample_shifts]
                gains = [0] + [gain for _, gain in sample_shifts]
                moved = [tuple(c + gains[bisect.bisect_right(ends, c)] for c in span) for span in sample_spans]
                masks.append(chat.token_mask_from_spans(offsets, moved))
            out["assistant_masks"] = masks
        out.convert_to_tensors(return_tensors)
        return out if return_dict else out["input_ids"]

    # ---- decoding ---------------------------------------------------------------------------------
    def decode(self, *args: Any, **kwargs: Any) -> Any:
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def post_process_image_text_to_text(self, generated_outputs: Any, skip_special_tokens: bool = True,
                                        **kwargs: Any) -> Any:
        """Decode generated ids to text, dropping special tokens by default."""
        return self.tokenizer.decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)

    # ---- loading and saving -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """processor_config.json content (the image processor and tokenizer have their own files)."""
        return {"image_token": self.image_token, "num_additional_image_tokens": self.num_additional_image_tokens,
                "patch_size": self.patch_size, "processor_class": type(self).__name__,
                "vision_feature_select_strategy": self.vision_feature_select_strategy}

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[str]:
        """Write processor_config.json, preprocessor_config.json, the tokenizer files and chat_template.jinja."""
        os.makedirs(save_directory, exist_ok=True)
        self.tokenizer.init_kwargs["processor_class"] = type(self).__name__
        paths = list(self.tokenizer.save_pretrained(save_directory))
        paths.append(self.image_processor.save_pretrained(save_directory))
        if self.video_processor is not None:
            paths.append(self.video_processor.save_pretrained(save_directory))
        paths.extend(save_chat_templates(self.chat_template, save_directory))
        path = os.path.join(save_directory, PROCESSOR_NAME)
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        paths.append(path)
        return paths

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, *, revision: str | None = None,
                        local_files_only: bool = False, cache_dir: str | None = None, token: str | bool | None = None,
                        subfolder: str | None = None, force_download: bool = False,
                        **kwargs: Any) -> "LlavaProcessor":
        """Load from a folder or Hub repo in either layout (transformers 5, or the older llava-hf files).

        As in transformers: `image_processor=` / `tokenizer=` instances replace the saved ones; keyword
        arguments the processor takes (patch_size, vision_feature_select_strategy, ...) override
        processor_config.json, any other (size=, do_normalize=, ...) the image processor's configuration.
        `backend=` ("pil" or "torchvision") is accepted: llavakit computes what transformers' PIL backend does.
        """
        hub = dict(revision=revision, local_files_only=local_files_only, cache_dir=cache_dir, token=token,
                   subfolder=subfolder, force_download=force_download)
        drop_transformers_only_kwargs(kwargs)
        image_processor, tokenizer = kwargs.pop("image_processor", None), kwargs.pop("tokenizer", None)
        kwargs.pop("backend", None)
        processor_dict = read_processor_dict(path_or_repo_id, hub)
        if image_processor is None and not processor_dict and resolve_file(
                path_or_repo_id, "preprocessor_config.json", required=False, **hub) is None:
            original = _original_processor(path_or_repo_id, hub, kwargs)
            if original is not None:
                return original
        video_processor = kwargs.pop("video_processor", None)
        image_overrides = {k: kwargs.pop(k) for k in list(kwargs) if k not in cls.config_keys + ("chat_template",)}
        if image_processor is None:
            image_config = load_image_processor_dict(path_or_repo_id, **hub)
            from llavakit.processing.auto import IMAGE_PROCESSOR_CLASSES  # here: auto imports this module
            named = IMAGE_PROCESSOR_CLASSES.get(image_config.get("image_processor_type"))  # e.g. SiglipImageProcessor
            image_class = named if named and issubclass(named, cls.image_processor_class) else cls.image_processor_class
            image_processor = image_class.from_dict(image_config, **image_overrides)
        elif image_overrides:
            raise TypeError(f"{cls.__name__}.from_pretrained got image processor options {sorted(image_overrides)} "
                            f"together with an image_processor instance: set them on the instance")
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(path_or_repo_id, **hub)
        template = processor_dict.get("chat_template")
        if template is None:
            template = load_processor_chat_template(path_or_repo_id, hub)
        if template is None:
            template = tokenizer.chat_template  # e.g. only tokenizer_config.json carries one
        init = {k: processor_dict[k] for k in cls.config_keys if k in processor_dict}
        if cls.video_processor_class is not None:
            init["video_processor"] = video_processor or load_video_processor(cls.video_processor_class,
                                                                              path_or_repo_id, hub)
        init.update(kwargs)
        init.setdefault("chat_template", template)
        processor = cls(image_processor=image_processor, tokenizer=tokenizer, **init)
        processor.name_or_path = os.fspath(path_or_repo_id)  # picks the built-in template when none ships
        return processor


def load_video_processor(default_class: type, path_or_repo_id: str | os.PathLike, hub: dict[str, Any]) -> Any:
    """The checkpoint's video processor: the class its config names when llavakit knows it, else default_class."""
    from llavakit.processing.video_processor import VIDEO_PROCESSOR_CLASSES, load_video_processor_dict

    config = load_video_processor_dict(path_or_repo_id, **hub)
    named = VIDEO_PROCESSOR_CLASSES.get(config.get("video_processor_type"))
    return (named if named and issubclass(named, default_class) else default_class).from_dict(config)

def _original_processor(path_or_repo_id: str | os.PathLike, hub: dict[str, Any], kwargs: dict[str, Any]) -> Any:
    """The processor of an original LLaVA folder (no processor files, an original config.json), else None."""
    from llavakit.loading.original import is_original_config
    from llavakit.processing.original_llava import build_processor

    path = resolve_file(path_or_repo_id, "config.json", required=False, **hub)
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return build_processor(path_or_repo_id, data, hub=hub, **kwargs) if is_original_config(data) else None


def read_processor_dict(path_or_repo_id: str | os.PathLike, hub: dict[str, Any]) -> dict[str, Any]:
    path = resolve_file(path_or_repo_id, PROCESSOR_NAME, required=False, **hub)
    if path is None:
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None


def load_processor_chat_template(path_or_repo_id: str | os.PathLike, hub: dict[str, Any]) -> str | dict | None:
    """transformers 5's order: the legacy chat_template.json wins over chat_template.jinja (+ chat_templates/)."""
    legacy = resolve_file(path_or_repo_id, LEGACY_CHAT_TEMPLATE_FILE, required=False, **hub)
    if legacy is not None:
        with open(legacy, encoding="utf-8") as f:
            return json.load(f)["chat_template"]
    templates = read_chat_templates(path_or_repo_id, hub)
    if not templates:
        return None
    return templates["default"] if list(templates) == ["default"] else templates


def _openai_image_blocks(message: dict[str, Any]) -> dict[str, Any]:
    """{"type": "image_url", "image_url": {"url": u}} (OpenAI style) -> {"type": "image", "url": u}; the same
    for "video_url" -> "video"."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("image_url", "video_url") and kind in part:
            info = part[kind]
            parts.append({"type": kind[:-4], "url": info.get("url", "") if isinstance(info, dict) else info})
        else:
            parts.append(part)
    return {**message, "content": parts}


def _videos_in(conversation: list[dict[str, Any]]) -> list[Any]:
    """The videos a conversation's messages reference: paths/URLs (decoded later) or frames, in order."""
    videos = []
    for message in conversation:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, dict) and part.get("type") == "video":
                source = next((part[key] for key in ("video", "url", "path") if part.get(key) is not None), None)
                if source is None:
                    raise ValueError('a {"type": "video"} part needs a "video", "url" or "path" to load when '
                                     "tokenize=True")
                videos.append(source)
    return videos


def _images_in(conversation: list[dict[str, Any]]) -> list[Any]:
    """The images a conversation's messages reference, loaded (paths and URLs only because the user put them there)."""
    images = []
    for message in conversation:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "image":
                continue
            for key in ("image", "url", "path", "base64"):
                if key in part:
                    source = part[key]
                    if key == "base64" and isinstance(source, str) and not source.startswith("data:"):
                        source = "data:image/*;base64," + source
                    images.append(load_image(source) if isinstance(source, (str, os.PathLike)) else source)
    return images

