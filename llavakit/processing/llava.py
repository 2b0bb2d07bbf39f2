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


# what LlavaProcessor.__init__ takes besides its image processor and tokenizer (processor_config.json's keys)
PROCESSOR_INIT_KWARGS = ("patch_size", "vision_feature_select_strategy", "image_token", "num_additional_image_tokens",
                         "chat_template")


class LlavaProcessor:
    """Wraps a CLIPImageProcessor and a tokenizer; expands `<image>` placeholders to the model's feature count."""

    image_processor_class = CLIPImageProcessor  # what from_pretrained builds from preprocessor_config.json

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

    # ---- calling ----------------------------------------------------------------------------------
    def __call__(self, images: Any = None, text: str | list[str] | None = None, padding: bool | str = False,
                 truncation: bool | str | None = None, max_length: int | None = None,
                 return_tensors: str | None = None, padding_side: str | None = None, add_special_tokens: bool = True,
                 **kwargs: Any) -> BatchFeature:
        """Tokenize prompts (expanding each `<image>`) and preprocess the images, in one BatchFeature."""
        out, _ = self._process(images, text, padding=padding, truncation=truncation, max_length=max_length,
                               return_tensors=return_tensors, padding_side=padding_side,
                               add_special_tokens=add_special_tokens, **kwargs)
        return out

    def _process(self, images: Any, text: Any, *, return_tensors: str | None, **kwargs: Any
                 ) -> tuple[BatchFeature, list[list[tuple[int, int]]]]:
        """The call, also returning per sample the (placeholder end, chars added so far) of each expansion."""
        if images is None and text is None:
            raise ValueError("LlavaProcessor needs text, images, or both")
        image_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in self.image_processor.valid_kwargs}
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

        image_outputs = self.image_processor(flat, **image_kwargs) if flat is not None else {}
        data: dict[str, Any] = {}
        shifts: list[list[tuple[int, int]]] = []
        if texts is not None:
            counts = self._image_token_counts(image_outputs, image_kwargs.get("data_format") == "channels_last")
            texts, shifts = self._expand(texts, counts)
            encoded = self.tokenizer(texts, **kwargs)
            self._check_image_tokens(texts, encoded["input_ids"], kwargs.get("max_length"))
            data.update(encoded)
        data.update(image_outputs)  # pixel_values (+ image_sizes for LLaVA-NeXT)
        return BatchFeature(data, tensor_type=return_tensors), shifts

    def _image_token_counts(self, image_outputs: dict[str, Any], channels_last: bool) -> list[int]:
        """The `<image>` token count of each processed image, in order (subclasses read more than the shape)."""
        return [self.num_image_tokens(*(p.shape[:2] if channels_last else p.shape[-2:]))
                for p in image_outputs.get("pixel_values", [])]

    def _expand(self, texts: list[str], counts: list[int]) -> tuple[list[str], list[list[tuple[int, int]]]]:
        """Replace the i-th `<image>` (across samples, in order) by counts[i] image tokens."""
        token, counts = self.image_token, iter(counts)
        expanded, shifts = [], []
        for text in texts:
            pieces = text.split(token)
            out, sample_shifts, gained, position = [pieces[0]], [], 0, len(pieces[0])
            for piece in pieces[1:]:
                n = next(counts)
                out.append(token * n + piece)
                position += len(token)
                gained += len(token) * (n - 1)
                sample_shifts.append((position, gained))
                position += len(piece)
            expanded.append("".join(out))
            shifts.append(sample_shifts)
        return expanded, shifts

    def _check_image_tokens(self, texts: list[str], input_ids: list[list[int]], max_length: int | None) -> None:
        """Truncation must not cut image tokens: the model needs one position per image feature."""
        in_text = [t.count(self.image_token) for t in texts]
        in_ids = [list(ids).count(self.image_token_id) for ids in input_ids]
        if in_text != in_ids:
            raise ValueError(
                f"Mismatch in `image` token count between text and `input_ids`: max_length={max_length} is too small "
                f"for the image tokens. Got ids={in_ids} and text={in_text} image tokens per sample (each image needs "
                f"{self.image_token} x its feature count). Disable truncation or increase max_length.")

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

        images = [img for c in conversations for img in _images_in(c)]
        bos = self.tokenizer.bos_token
        if bos is not None and texts[0].startswith(bos):
            call_kwargs["add_special_tokens"] = False  # the template already wrote BOS
        if return_assistant_tokens_mask:
            call_kwargs["return_offsets_mapping"] = True
        out, shifts = self._process(images or None, texts if batched else texts[0], return_tensors=None, **call_kwargs)
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
        image_overrides = {k: kwargs.pop(k) for k in list(kwargs) if k not in PROCESSOR_INIT_KWARGS}
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
        init = {k: processor_dict[k] for k in PROCESSOR_INIT_KWARGS if k in processor_dict and k != "chat_template"}
        init.update(kwargs)
        init.setdefault("chat_template", template)
        processor = cls(image_processor, tokenizer, **init)
        processor.name_or_path = os.fspath(path_or_repo_id)  # picks the built-in template when none ships
        return processor


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
    """{"type": "image_url", "image_url": {"url": u}} (OpenAI style) -> {"type": "image", "url": u}."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    parts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "image_url" and "image_url" in part:
            info = part["image_url"]
            parts.append({"type": "image", "url": info.get("url", "") if isinstance(info, dict) else info})
        else:
            parts.append(part)
    return {**message, "content": parts}


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

