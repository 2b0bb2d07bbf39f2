"""Request validation for the OpenAI-style endpoints, and the error type every route answers with.

Bodies are checked by hand (not by pydantic) so each problem gets one clear message naming the field,
in OpenAI's error shape: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from llavakit.generation.structured import Constraint

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
               500: "internal_server_error", 503: "service_unavailable"}


class APIError(Exception):
    """An error answered to the client with an HTTP status and OpenAI's JSON error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


@dataclasses.dataclass
class SamplingParams:
    """What one request asks of the decoder; temperature 0 means greedy."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = dataclasses.field(default_factory=list)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_p: float = 0.0
    top_k: int = 0  # 0: off
    logit_bias: dict[int, float] = dataclasses.field(default_factory=dict)
    constraint: Constraint | None = None  # structured output
    constraint_param: str | None = None  # the request field the constraint came from, for error messages


# The request fields each endpoint knows. OpenAI answers an unknown field with a 400, and so do we.
_COMMON = {"model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "logprobs",
           "presence_penalty", "frequency_penalty", "logit_bias", "user",
           "min_p", "top_k", "guided_json", "guided_regex", "guided_choice", "guided_grammar"}  # vLLM's extensions
CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens", "top_logprobs", "response_format", "metadata", "store",
                         "service_tier", "safety_identifier", "prompt_cache_key", "parallel_tool_calls",
                         "tool_choice", "modalities", "tools", "functions", "function_call", "audio", "prediction",
                         "web_search_options", "reasoning_effort", "verbosity"}
COMPLETION_FIELDS = _COMMON | {"prompt", "best_of", "echo", "suffix"}
# Fields OpenAI has that this server cannot honour: refused with a message rather than silently dropped.
UNSUPPORTED = {"tools": "tool calling", "functions": "function calling", "function_call": "function calling",
               "audio": "audio output", "prediction": "predicted outputs", "web_search_options": "web search",
               "reasoning_effort": "reasoning models", "verbosity": "reasoning models", "suffix": "suffix",
               "echo": "echo"}


@dataclasses.dataclass
class ChatRequest:
    """A validated chat (or completion) request: messages with image URLs still unfetched."""

    model: str | None
    messages: list[dict[str, Any]]  # role + content (str or list of {"type": "text"|"image_url", ...})
    sampling: SamplingParams
    stream: bool = False
    include_usage: bool = False
    prompt: str | None = None  # /v1/completions: raw prompt text, no chat template


def _typed(body: dict, name: str, kinds: tuple[type, ...], default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds:
        raise APIError(422, f"'{name}' must be {' or '.join(k.__name__ for k in kinds)}, got a boolean", name)
    if not isinstance(value, kinds):
        raise APIError(422, f"'{name}' must be {' or '.join(k.__name__ for k in kinds)}, got "
                       f"{type(value).__name__}", name)
    return value


def _in_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise APIError(400, f"'{name}' must be between {low} and {high}, got {value}", name)


def _check_fields(body: dict, known: set[str]) -> None:
    """Refuse fields OpenAI would refuse (unknown ones) and fields we cannot honour, each with its name."""
    for name in body:
        if name not in known:
            raise APIError(400, f"Unrecognized request argument supplied: {name}", name, "unknown_parameter")
        value = body[name]
        if name in UNSUPPORTED and value not in (None, False, [], {}):
            raise APIError(400, f"'{name}' ({UNSUPPORTED[name]}) is not supported by this server", name,
                           "unsupported_parameter")
    if body.get("tool_choice") not in (None, "none"):
        raise APIError(400, "'tool_choice' must be 'none': tool calling is not supported by this server",
                       "tool_choice", "unsupported_parameter")
    if body.get("modalities") not in (None, ["text"]):
        raise APIError(400, "'modalities' must be [\"text\"]: this server only writes text", "modalities",
                       "unsupported_parameter")


def parse_sampling(body: dict, chat: bool) -> SamplingParams:
    """The sampling fields shared by both endpoints, with OpenAI's names and ranges."""
    max_tokens = _typed(body, "max_completion_tokens", (int,)) if chat else None
    max_tokens = max_tokens if max_tokens is not None else _typed(body, "max_tokens", (int,))
    if max_tokens is not None and max_tokens < 1:
        raise APIError(400, f"'max_tokens' must be at least 1, got {max_tokens}", "max_tokens")
    temperature = float(_typed(body, "temperature", (int, float), 1.0))
    _in_range("temperature", temperature, 0.0, 2.0)
    top_p = float(_typed(body, "top_p", (int, float), 1.0))
    if not 0.0 < top_p <= 1.0:
        raise APIError(400, f"'top_p' must be in (0, 1], got {top_p}", "top_p")
    stop = _typed(body, "stop", (str, list), [])
    stop = [stop] if isinstance(stop, str) else stop
    if len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise APIError(400, f"'stop' must be a string or a list of up to 4 non-empty strings, got {stop!r}", "stop")
    seed = _typed(body, "seed", (int,))
    if chat:
        logprobs = bool(_typed(body, "logprobs", (bool,), False))
        top = _typed(body, "top_logprobs", (int,), 0)
        if top and not logprobs:
            raise APIError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
    else:  # the legacy endpoint: logprobs is the number of alternatives
        top = _typed(body, "logprobs", (int,), None)
        logprobs, top = top is not None, top or 0
    _in_range("top_logprobs", top, 0, 20)
    n = _typed(body, "n", (int,), 1)
    _in_range("n", n, 1, 128)
    best_of = _typed(body, "best_of", (int,), n)
    if best_of != n:
        raise APIError(400, f"'best_of' must equal 'n' ({n}) on this server, got {best_of}", "best_of")
    penalties = {}
    for name in ("presence_penalty", "frequency_penalty"):
        penalties[name] = float(_typed(body, name, (int, float), 0.0))
        _in_range(name, penalties[name], -2.0, 2.0)
    min_p = float(_typed(body, "min_p", (int, float), 0.0))
    _in_range("min_p", min_p, 0.0, 1.0)
    top_k = _typed(body, "top_k", (int,), 0)
    if top_k < -1:
        raise APIError(400, f"'top_k' must be -1 or 0 (off) or a positive number of tokens, got {top_k}", "top_k")
    constraint, param = parse_constraint(body, chat)
    return SamplingParams(max_tokens, temperature, top_p, list(stop), seed, logprobs, top, n,
                          penalties["presence_penalty"], penalties["frequency_penalty"], min_p, max(top_k, 0),
                          _logit_bias(body), constraint, param)


def _logit_bias(body: dict) -> dict[int, float]:
    """OpenAI's {"token id as a string": bias in [-100, 100]} (ids are checked against the vocabulary later)."""
    bias = _typed(body, "logit_bias", (dict,), {})
    out = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise APIError(400, f"'logit_bias' keys must be token ids, got {key!r}", "logit_bias") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise APIError(400, f"'logit_bias' values must be numbers in [-100, 100], got {value!r} for {key}",
                           "logit_bias")
        out[token] = float(value)
    return out


def parse_constraint(body: dict, chat: bool) -> tuple[Constraint | None, str | None]:
    """Structured output from `response_format` (OpenAI) or one of vLLM's `guided_*` fields; at most one."""
    found = []
    if chat and body.get("response_format") is not None:
        found.append((_response_format(body["response_format"]), "response_format"))
    for name, kind in (("guided_json", "json_schema"), ("guided_regex", "regex"), ("guided_choice", "choice"),
                       ("guided_grammar", "grammar")):
        value = body.get(name)
        if value is None:
            continue
        if name == "guided_json" and isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as err:
                raise APIError(400, f"'guided_json' is not valid JSON: {err}", name) from None
        expected = {"guided_json": dict, "guided_choice": list}.get(name, str)
        if not isinstance(value, expected) or not value:
            raise APIError(400, f"'{name}' must be a non-empty {expected.__name__}", name)
        found.append((Constraint(kind, value), name))
    found = [(c, p) for c, p in found if c is not None]
    if len(found) > 1:
        raise APIError(400, f"give one structured-output option, got {', '.join(p for _, p in found)}", found[1][1])
    return found[0] if found else (None, None)


def _response_format(value: Any) -> Constraint | None:
    if not isinstance(value, dict):
        raise APIError(400, "'response_format' must be an object with a 'type'", "response_format")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return Constraint("json_object")
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise APIError(400, "'response_format.json_schema' must be an object with a 'schema'",
                           "response_format.json_schema")
        schema = spec.get("schema")
        if schema is None:
            return Constraint("json_object")
        if not isinstance(schema, dict):
            raise APIError(400, "'response_format.json_schema.schema' must be a JSON schema object",
                           "response_format.json_schema.schema")
        return Constraint("json_schema", schema)
    raise APIError(400, f"'response_format.type' must be text, json_object or json_schema, got {kind!r}",
                   "response_format.type")


def _check_message(i: int, message: Any) -> dict[str, Any]:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise APIError(422, f"'{where}' must be an object, got {type(message).__name__}", where)
    role = message.get("role")
    if role not in ("system", "user", "assistant", "developer"):
        raise APIError(400, f"'{where}.role' must be system, user or assistant, got {role!r}", f"{where}.role")
    content = message.get("content")
    if content is None and role == "assistant":
        content = ""
    if isinstance(content, str):
        return {"role": "system" if role == "developer" else role, "content": content}
    if not isinstance(content, list):
        raise APIError(422, f"'{where}.content' must be a string or a list of parts", f"{where}.content")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url  # Ollama also accepts a bare string
            if not isinstance(url, str) or not url:
                raise APIError(422, f"'{where}.content[{j}].image_url' needs a 'url' string",
                               f"{where}.content[{j}].image_url")
            parts.append({"type": "image_url", "url": url})
        else:
            raise APIError(400, f"'{where}.content[{j}]' must be a text or image_url part, got type {kind!r}",
                           f"{where}.content[{j}]")
    return {"role": "system" if role == "developer" else role, "content": parts}


def _stream_options(body: dict) -> tuple[bool, bool]:
    stream = bool(_typed(body, "stream", (bool,), False))
    options = _typed(body, "stream_options", (dict,), {})
    return stream, bool(options.get("include_usage", False))


def parse_chat(body: Any) -> ChatRequest:
    """Validate a /v1/chat/completions body."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(422, "'messages' must be a non-empty list", "messages")
    checked = [_check_message(i, m) for i, m in enumerate(messages)]
    _check_fields(body, CHAT_FIELDS)
    stream, usage = _stream_options(body)
    return ChatRequest(_typed(body, "model", (str,)), checked, parse_sampling(body, chat=True), stream, usage)


def parse_completion(body: Any) -> ChatRequest:
    """Validate a /v1/completions body (a text prompt, no images)."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise APIError(422, "'prompt' must be a non-empty string", "prompt")
    _check_fields(body, COMPLETION_FIELDS)
    stream, usage = _stream_options(body)
    return ChatRequest(_typed(body, "model", (str,)), [], parse_sampling(body, chat=False), stream, usage, prompt)
