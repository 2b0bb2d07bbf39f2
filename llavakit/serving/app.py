"""The FastAPI app: OpenAI-style routes over the engine, API-key check, errors in OpenAI's JSON shape.

Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /metrics,
and the chat page at /.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from llavakit.serving import prompt as prompts
from llavakit.serving.defaults import apply_defaults, sampling_defaults
from llavakit.serving.engine import Engine, Event
from llavakit.serving.media import MediaLimits
from llavakit.serving.schemas import APIError, ChatRequest, parse_chat, parse_completion

STATIC = Path(__file__).parent / "static"


def create_app(engine: Engine, model_name: str, limits: MediaLimits | None = None, api_key: str | None = None,
               chat_template: str | None = None, max_body_bytes: int = 32 * 1024 * 1024,
               access_log: bool = False) -> FastAPI:
    """The server around a started (or to-be-started) engine; the app starts and stops it with itself.
    `access_log` prints one line per request to stderr (client, method, path, status, seconds)."""
    limits = limits or MediaLimits()
    defaults = sampling_defaults(getattr(engine.model, "generation_config", None))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="llavakit", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine = engine  # for hosts that run the app without its lifespan (ray_serve.Replica)
    metrics = engine.metrics

    @app.middleware("http")
    async def auth_and_count(request: Request, call_next: Any) -> Any:
        start = time.perf_counter()
        if api_key and request.url.path.startswith("/v1/") and \
                request.headers.get("authorization", "") != f"Bearer {api_key}":
            response = _error(APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                       code="invalid_api_key"))
        else:
            response = await call_next(request)
        metrics.inc("requests_total", endpoint=request.url.path, status=str(response.status_code))
        if access_log:
            _log_request(request, response.status_code, time.perf_counter() - start)
        return response

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return _error(err)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return _error(APIError(err.status_code, f"{request.method} {request.url.path}: {err.detail}"))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> JSONResponse:
        return _error(APIError(500, f"internal error: {type(err).__name__}: {err}"))

    async def read_body(request: Request) -> Any:
        body = await request.body()
        if len(body) > max_body_bytes:
            raise APIError(413, f"the request body is {len(body)} bytes, more than the {max_body_bytes} allowed")
        try:
            return json.loads(body)
        except ValueError as err:
            raise APIError(400, f"the request body is not valid JSON: {err}") from None

    def check_model(req: ChatRequest) -> None:
        if req.model not in (None, model_name):
            raise APIError(404, f"the model {req.model!r} does not exist; this server serves {model_name!r}",
                           "model", "model_not_found")

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics_text() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": model_name, "object": "model", "created": int(time.time()), "owned_by": "llavakit",
                "max_model_len": engine.max_model_len}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await read_body(request)
        req = parse_chat(body)
        apply_defaults(req.sampling, body, defaults)
        check_model(req)
        prompt = await run_in_threadpool(prompts.encode_chat, engine.processor, req, limits, chat_template)
        return await _respond(request, engine, req, prompt, model_name, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await read_body(request)
        req = parse_completion(body)
        apply_defaults(req.sampling, body, defaults)
        check_model(req)
        prompt = await run_in_threadpool(prompts.encode_text, engine.processor, req.prompt)
        return await _respond(request, engine, req, prompt, model_name, chat=False)

    return app


def _log_request(request: Request, status: int, seconds: float) -> None:
    """One access-log line; for a streamed answer the time is until its first byte."""
    client = f"{request.client.host}:{request.client.port}" if request.client else "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} {client} {request.method} {request.url.path} {status} {seconds:.3f}s", file=sys.stderr,
          flush=True)


def _error(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


async def _respond(request: Request, engine: Engine, req: ChatRequest, prompt: prompts.Prompt, model_name: str,
                   chat: bool) -> Any:
    """Submit the n choices (errors before any output keep their status), then stream or collect."""
    loop, events = asyncio.get_running_loop(), asyncio.Queue()

    def submit_all() -> list:
        seqs = []
        try:
            for i in range(req.sampling.n):
                emit = (lambda index: lambda e: loop.call_soon_threadsafe(events.put_nowait, (index, e)))(i)
                seqs.append(engine.submit(prompt, req.sampling, emit, choice=i))
        except APIError:
            for seq in seqs:
                seq.cancel()
            raise
        return seqs

    seqs = await run_in_threadpool(submit_all)  # compiling a structured-output constraint takes a moment
    meta = {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex, "created": int(time.time()),
            "model": model_name}
    if req.stream:
        return StreamingResponse(_sse(events, seqs, req, meta, chat), media_type="text/event-stream")
    texts, logprobs = [""] * len(seqs), [[] for _ in seqs]
    last: list[Event | None] = [None] * len(seqs)
    try:
        while not all(e is not None and (e.finish_reason or e.error) for e in last):
            try:
                i, event = await asyncio.wait_for(events.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return None
                continue
            texts[i], logprobs[i], last[i] = texts[i] + event.text, logprobs[i] + event.logprobs, event
            if event.error:
                raise event.error
    finally:
        for seq in seqs:
            seq.cancel()  # frees the slots if the client left or a choice failed; a no-op when finished
    choices = [_choice(chat, texts[i], logprobs[i], last[i].finish_reason, delta=False, index=i)
               for i in range(len(seqs))]
    return {**meta, "object": "chat.completion" if chat else "text_completion", "choices": choices,
            "usage": _usage(last)}


async def _sse(events: asyncio.Queue, seqs: list, req: ChatRequest, meta: dict, chat: bool) -> AsyncIterator[str]:
    """OpenAI's server-sent events: `data: {chunk}` per step and choice, `data: [DONE]` last."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(**fields: Any) -> str:
        return f"data: {json.dumps({**meta, 'object': kind, **fields})}\n\n"

    last: list[Event | None] = [None] * len(seqs)
    try:
        if chat:
            for i in range(len(seqs)):
                yield chunk(choices=[{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                      "finish_reason": None}])
        while not all(e is not None and e.finish_reason for e in last):
            i, event = await events.get()
            if event.error:
                yield f"data: {json.dumps(event.error.body())}\n\n"
                break
            last[i] = event
            if event.text or event.logprobs or event.finish_reason:
                yield chunk(choices=[_choice(chat, event.text, event.logprobs, event.finish_reason, delta=True,
                                             index=i)])
        else:
            if req.include_usage:
                yield chunk(choices=[], usage=_usage(last))
        yield "data: [DONE]\n\n"
    finally:
        for seq in seqs:
            seq.cancel()  # the client disconnected, or the stream ended: either way the slots are free


def _choice(chat: bool, text: str, logprobs: list[dict], finish: str | None, delta: bool, index: int = 0) -> dict:
    if chat:
        key = "delta" if delta else "message"
        content = {"content": text} if delta else {"role": "assistant", "content": text}
        lp = {"content": [_chat_logprob(x) for x in logprobs]} if logprobs else None
        return {"index": index, key: content, "logprobs": lp, "finish_reason": finish}
    lp = None
    if logprobs:
        lp = {"tokens": [x["token"] for x in logprobs], "token_logprobs": [x["logprob"] for x in logprobs],
              "top_logprobs": [dict(x["top"]) for x in logprobs]}
    return {"index": index, "text": text, "logprobs": lp, "finish_reason": finish}


def _chat_logprob(x: dict) -> dict:
    top = [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in x["top"]]
    return {"token": x["token"], "logprob": x["logprob"], "bytes": list(x["token"].encode()), "top_logprobs": top}


def _usage(last: list[Event]) -> dict:
    """Token counts: the prompt once, the completion tokens of every choice."""
    prompt, completion = last[0].prompt_tokens, sum(e.completion_tokens for e in last)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
