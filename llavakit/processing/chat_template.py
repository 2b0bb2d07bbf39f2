"""Render Jinja chat templates the way transformers does (sandboxed, trim_blocks, lstrip_blocks).

Templates come from checkpoints, so they run in Jinja's immutable sandbox and only ever see plain
JSON-like data. `{% generation %}...{% endgeneration %}` marks assistant text; its character spans are
returned so callers can build assistant-token masks.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import threading
from datetime import datetime
from typing import Any, Mapping

import jinja2
import jinja2.ext
import jinja2.meta
import jinja2.nodes
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

Message = dict[str, Any]
Conversation = list[Message]

_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_tracker = threading.local()  # per-thread (rendered_blocks, spans) while rendering with generation tracking


class _GenerationExtension(jinja2.ext.Extension):
    """`{% generation %}body{% endgeneration %}`: renders body unchanged and records its character span."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_record"), [], [], body).set_lineno(lineno)

    def _record(self, caller: Any) -> str:
        text = caller()
        state = getattr(_tracker, "state", None)
        if state is not None:
            blocks, spans = state
            start = sum(len(b) for b in blocks)
            spans.append((start, start + len(text)))
        return text


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes HTML characters; chat templates expect plain JSON.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=32)
def compile_template(template: str) -> jinja2.Template:
    """Compile (and cache) a chat template in the sandboxed environment transformers uses."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationExtension, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def template_variables(template: str) -> frozenset[str]:
    """Names the template reads from its context (so other kwargs can be routed elsewhere)."""
    env = ImmutableSandboxedEnvironment(extensions=[_GenerationExtension, jinja2.ext.loopcontrols])
    return frozenset(jinja2.meta.find_undeclared_variables(env.parse(template)))


def plain_data(value: Any) -> Any:
    """A copy made only of JSON-like types; anything else (images, arrays, tensors) becomes '<TypeName>'.

    Templates only test whether media keys exist, so this changes no output, and the sandbox never
    sees objects whose methods could touch the file system.
    """
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {plain_data(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_data(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain_data(v) for v in value)
    if isinstance(value, np.generic):
        return plain_data(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return f"<{type(value).__name__}>"


def _alias_reasoning(chat: Conversation) -> Conversation:
    """Templates read `reasoning_content` (or `thinking`); fill them from whichever name the caller used."""
    out = []
    for message in chat:
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def as_plain_data(value: Any) -> Any:
    """Message objects as dicts (transformers 5.24+ accepts them): dataclass instances, pydantic models such as
    the OpenAI SDK's messages (`model_dump()`), nested in lists and dicts too. Media objects stay as they are."""
    if isinstance(value, Mapping):
        return {key: as_plain_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(as_plain_data(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_plain_data(getattr(value, f.name)) for f in dataclasses.fields(value)}  # no deep copy
    if callable(getattr(value, "model_dump", None)):
        return as_plain_data(value.model_dump())
    return value


def split_conversations(conversation: Any) -> tuple[list[Conversation], bool]:
    """(list of conversations, is_batched), with None-valued message keys dropped. A conversation may be an
    object with a `.messages` list, and messages may be dataclasses or pydantic models."""
    conversation = getattr(conversation, "messages", conversation)
    if isinstance(conversation, (list, tuple)):
        conversation = [as_plain_data(getattr(c, "messages", c)) for c in conversation]
    if not isinstance(conversation, (list, tuple)) or len(conversation) == 0:
        raise ValueError("a conversation must be a non-empty list of messages (or a list of such lists)")
    batched = isinstance(conversation[0], (list, tuple))
    conversations = list(conversation) if batched else [conversation]
    out = []
    for chat in conversations:
        if not isinstance(chat, (list, tuple)) or len(chat) == 0:
            raise ValueError("each conversation must be a non-empty list of messages")
        messages = []
        for message in chat:
            if not isinstance(message, Mapping):
                raise TypeError(f"chat messages must be dicts with 'role' and 'content', got {type(message).__name__}")
            messages.append({k: v for k, v in message.items() if v is not None})
        out.append(messages)
    return out, batched


def render(template: str, conversations: list[Conversation], *, add_generation_prompt: bool = False,
           continue_final_message: bool | str = False, tools: list[dict] | None = None,
           documents: list[dict] | None = None, track_generation: bool = False,
           **template_kwargs: Any) -> tuple[list[str], list[list[tuple[int, int]]]]:
    """Render each conversation; returns (texts, generation spans per text).

    `continue_final_message` leaves the last message open: everything the template writes after its
    text (end-of-turn tokens, separators) is cut, so the model continues that message. A string value
    names the field to continue (default 'content').
    """
    if continue_final_message and add_generation_prompt:
        raise ValueError("continue_final_message and add_generation_prompt cannot both be set: continue the final "
                         "message, or start a new assistant message, not both")
    if tools is not None:
        for tool in tools:
            if not isinstance(tool, Mapping):
                raise TypeError(f"tools must be JSON-schema dicts, got {type(tool).__name__}")
    if documents is not None:
        for document in documents:
            if not isinstance(document, Mapping):
                raise TypeError("documents must be dicts (e.g. with 'title' and 'text' keys)")
    compiled = compile_template(template)
    tools, documents = plain_data(tools), plain_data(documents)
    template_kwargs = plain_data(template_kwargs)

    texts, all_spans = [], []
    for chat in conversations:
        chat = _alias_reasoning(plain_data(list(chat)))
        final_text = None
        if continue_final_message:
            field = continue_final_message if isinstance(continue_final_message, str) else "content"
            final_text = _tag_final_message(chat, field, template)
        context = dict(messages=chat, tools=tools, documents=documents, add_generation_prompt=add_generation_prompt,
                       **template_kwargs)
        spans: list[tuple[int, int]] = []
        if track_generation:
            blocks: list[str] = []
            _tracker.state = (blocks, spans)
            try:
                for block in compiled.generate(**context):
                    blocks.append(block)
            finally:
                _tracker.state = None
            text = "".join(blocks)
        else:
            text = compiled.render(**context)
        if final_text is not None:
            text = _cut_after_final_message(text, final_text)
        texts.append(text)
        all_spans.append(spans)
    return texts, all_spans


def _tag_final_message(chat: Conversation, field: str, template: str) -> str:
    """Append a marker to the final message's text (in place, on our copy); returns that text."""
    final = chat[-1].get(field)
    if final is None:
        raise ValueError(f'continue_final_message is set but the final message has no "{field}" to continue')
    fields = [field]
    if field in _REASONING_FIELDS:
        fields = [f for f in _REASONING_FIELDS if chat[-1].get(f) == final]
    if not any(f in template for f in fields):
        raise ValueError(f'continue_final_message is set to "{field}" but the chat template never reads that field')
    if isinstance(final, (list, tuple)):
        for part in reversed(final):
            if isinstance(part, dict) and "text" in part:
                text = part["text"]
                part["text"] = text + _CONTINUE_TAG
                return text
        raise ValueError("continue_final_message is set but the final message has no text part to continue")
    for f in fields:
        chat[-1][f] = chat[-1][f] + _CONTINUE_TAG
    return final


def _cut_after_final_message(rendered: str, final_text: str) -> str:
    tag = _CONTINUE_TAG.strip()
    if final_text.strip() not in rendered or tag not in rendered:
        raise ValueError("continue_final_message is set but the final message does not appear in the rendered chat; "
                         f"the template changed it. Final message: {final_text.strip()!r}")
    at = rendered.rindex(tag)
    if rendered[at:at + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
        return rendered[:at]
    return rendered[:at].rstrip()  # the template trimmed the message's trailing whitespace


def has_generation_tags(template: str) -> bool:
    return re.search(r"\{%-?\s*generation\s*-?%\}", template) is not None


def token_mask_from_spans(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """1 for every token whose character range overlaps one of the spans (zero-width tokens never do)."""
    mask = [0] * len(offsets)
    for start, end in spans:
        for i, (tok_start, tok_end) in enumerate(offsets):
            if tok_start < end and tok_end > start:
                mask[i] = 1
    return mask
