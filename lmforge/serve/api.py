"""The OpenAI-compatible HTTP API: /v1/models, /v1/completions, /v1/chat/completions, /v1/classify.

Requests are validated by pydantic models; any invalid request is answered 400 in OpenAI's error
shape, an unknown model 404, a missing or wrong API key 401. Generation goes through each model's
engine (continuous batching), so concurrent requests share forwards. Streams are server-sent events
ending with `data: [DONE]`. Beyond OpenAI's fields: `top_k`, and `truncate_prompt_tokens` (as in
vLLM) to keep a too-long prompt's last tokens instead of rejecting it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmforge.errors import DataError
from lmforge.serve.engine import Event, Request as GenRequest, Sampling
from lmforge.serve.models import ApiError, ClassifierService, LMService, Registry, model_card

MAX_TOKENS_LIMIT = 4096  # per request
MAX_CHOICES = 16  # prompts x n per request


class _Body(BaseModel):
    # Strict: "5" is not a number and 1 is not a bool; OpenAI parameters lmforge does not use are
    # accepted and ignored, as other OpenAI-compatible servers do.
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class _Generation(_Body):
    model: str
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: bool | int | None = None
    truncate_prompt_tokens: int | None = Field(None, ge=1)


class CompletionBody(_Generation):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False


class Message(_Body):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict]


class ChatBody(_Generation):
    messages: list[Message] = Field(min_length=1)


class ClassifyBody(_Body):
    model: str
    input: str | list[str]


# --- errors --------------------------------------------------------------------------------------


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        # A union's failed alternatives add their type names to the path; keep the field's own path.
        loc = [x for x in loc if not any(c in x for c in "[]") and x not in ("str", "int", "list", "bool")]
        param = ".".join(loc) or None
        if first.get("type") == "missing":
            message = f"Missing required parameter: '{param}'."
        elif first.get("type") == "json_invalid":
            message = "The request body is not valid JSON."
            param = None
        else:
            message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}." if param else str(first.get("msg"))
        return JSONResponse(ApiError(400, message, param=param, code="invalid_value"
                                     if first.get("type") != "missing" else "missing_required_parameter").body(),
                            status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        err = ApiError(exc.status_code, str(exc.detail), type="invalid_request_error" if exc.status_code < 500
                       else "server_error")
        return JSONResponse(err.body(), status_code=exc.status_code)


def api_key_check(api_key: str | None):
    async def check(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not given or not secrets.compare_digest(given.encode(), api_key.encode()):
            raise ApiError(401, "Incorrect API key provided. Pass it as 'Authorization: Bearer KEY'.",
                           code="invalid_api_key")
    return check


# --- generation ----------------------------------------------------------------------------------


async def _lm(registry: Registry, name: str) -> LMService:
    service = await asyncio.to_thread(registry.get, name)  # may load the run
    if not isinstance(service, LMService):
        raise ApiError(400, f"The model '{name}' is a classifier; use /v1/classify", param="model",
                       code="wrong_model_task")
    return service


def _prompt_ids(service: LMService, ids: list[int], body: _Generation) -> list[int]:
    T = service.context_len
    if len(ids) <= T:
        return ids
    if body.truncate_prompt_tokens is None:
        raise ApiError(400, f"This model's maximum context length is {T} tokens, but the prompt has {len(ids)} "
                            "tokens. Shorten the prompt, or set truncate_prompt_tokens to keep its last tokens.",
                       param="messages" if isinstance(body, ChatBody) else "prompt", code="context_length_exceeded")
    return ids[-min(body.truncate_prompt_tokens, T):]


def _sampling(service: LMService, body: _Generation, default_max: int, stop_ids: set[int], seed_offset: int) -> Sampling:
    if body.logprobs not in (None, False, 0):
        raise ApiError(400, "logprobs are not supported by this server", param="logprobs", code="unsupported")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    max_tokens = default_max if max_tokens is None else max_tokens
    if max_tokens > MAX_TOKENS_LIMIT:
        raise ApiError(400, f"max_tokens is {max_tokens}; this server allows at most {MAX_TOKENS_LIMIT}",
                       param="max_tokens", code="invalid_value")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 4:
        raise ApiError(400, "at most 4 stop sequences are allowed", param="stop", code="invalid_value")
    seed = None if body.seed is None else body.seed + seed_offset
    return Sampling(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                    seed=seed, stop=stop, stop_ids=stop_ids)


class _Job:
    """The sequences of one request (prompts x n), their events merged into one asyncio queue."""

    def __init__(self, service: LMService, prompts: list[list[int]], samplings: list[Sampling]):
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self.requests = []
        for index, (ids, sampling) in enumerate(zip(prompts, samplings)):
            def emit(event: Event, index=index) -> None:
                try:
                    loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))
                except RuntimeError:  # the event loop is gone (shutdown)
                    pass
            self.requests.append(GenRequest(ids, sampling, service.tok, emit))
        self.open = len(self.requests)
        for r in self.requests:
            service.engine.submit(r)

    async def events(self) -> AsyncIterator[list[tuple[int, Event]]]:
        """Batches of events as they come (whatever is queued is handed over at once)."""
        try:
            while self.open:
                batch = [await self.queue.get()]
                while not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                for _, event in batch:
                    if event.kind in ("done", "error"):
                        self.open -= 1
                yield batch
        finally:
            self.cancel()

    def cancel(self) -> None:
        for r in self.requests:
            r.cancelled.set()


def _usage(dones: dict[int, Event]) -> dict:
    prompt = sum(e.prompt_tokens for e in dones.values())
    completion = sum(e.completion_tokens for e in dones.values())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _collect(job: _Job) -> tuple[dict[int, str], dict[int, Event]]:
    texts: dict[int, str] = {i: "" for i in range(len(job.requests))}
    dones: dict[int, Event] = {}
    async for batch in job.events():
        for index, event in batch:
            if event.kind == "delta":
                texts[index] += event.text
            elif event.kind == "error":
                raise ApiError(503, event.text, type="server_error", code="engine_error")
            else:
                dones[index] = event
    return texts, dones


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _stream(job: _Job, chunk, include_usage: bool, head=None) -> StreamingResponse:
    """SSE of `chunk(index, event)` dicts (None: nothing to send), then usage and [DONE]."""

    async def body() -> AsyncIterator[str]:
        dones: dict[int, Event] = {}
        if head is not None:
            yield "".join(_sse(head(i)) for i in range(len(job.requests)))
        async for batch in job.events():
            out = []
            for index, event in batch:
                if event.kind == "error":
                    out.append(_sse(ApiError(503, event.text, type="server_error", code="engine_error").body()))
                    continue
                if event.kind == "done":
                    dones[index] = event
                c = chunk(index, event)
                if c is not None:
                    out.append(_sse(c))
            if out:
                yield "".join(out)
        if include_usage:
            yield _sse(chunk(None, None) | {"choices": [], "usage": _usage(dones)})
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _completion_prompts(service: LMService, body: CompletionBody) -> list[tuple[str, list[int]]]:
    p = body.prompt
    if isinstance(p, str):
        items = [p]
    elif p and all(isinstance(x, int) for x in p):
        items = [list(p)]
    else:
        items = list(p)
    if not items:
        raise ApiError(400, "prompt is an empty list", param="prompt", code="invalid_value")
    out = []
    for item in items:
        if isinstance(item, str):
            out.append((item, service.tok.encode(item)))
        else:
            if any(t < 0 or t >= service.tok.vocab_size for t in item):
                raise ApiError(400, f"prompt token ids must be in [0, {service.tok.vocab_size})", param="prompt",
                               code="invalid_value")
            out.append((service.tok.decode(item), list(item)))
    return out


async def completions(registry: Registry, body: CompletionBody):
    service = await _lm(registry, body.model)
    prompts = [(text, _prompt_ids(service, ids, body)) for text, ids in _completion_prompts(service, body)]
    if len(prompts) * body.n > MAX_CHOICES:
        raise ApiError(400, f"prompts x n is {len(prompts) * body.n}; at most {MAX_CHOICES}", param="n")
    stop_ids = {service.tok.eot_id}
    ids_list, samplings, echo = [], [], []
    for p, (text, ids) in enumerate(prompts):
        for i in range(body.n):
            ids_list.append(ids)
            samplings.append(_sampling(service, body, 16, stop_ids, p * body.n + i))
            echo.append(text if body.echo else "")
    job = _Job(service, ids_list, samplings)
    base = {"id": f"cmpl-{secrets.token_hex(12)}", "object": "text_completion", "created": int(time.time()),
            "model": body.model}
    if body.stream:
        def chunk(index, event):
            if index is None:
                return dict(base)
            text, reason = (event.text, None) if event.kind == "delta" else ("", event.finish_reason)
            return base | {"choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": reason}]}

        head = (lambda i: base | {"choices": [{"text": echo[i], "index": i, "logprobs": None,
                                               "finish_reason": None}]}) if body.echo else None
        return _stream(job, chunk, bool(body.stream_options and body.stream_options.include_usage), head)
    texts, dones = await _collect(job)
    return base | {"choices": [{"text": echo[i] + texts[i], "index": i, "logprobs": None,
                                "finish_reason": dones[i].finish_reason} for i in range(len(texts))],
                   "usage": _usage(dones)}


async def chat_completions(registry: Registry, body: ChatBody):
    from lmforge.lm.chat import check_messages

    service = await _lm(registry, body.model)
    if service.chat is None:
        raise ApiError(400, f"The model '{body.model}' has no chat template (it was not fine-tuned on "
                            "conversations); use /v1/completions, or fine-tune it with `lmforge sft`",
                       param="model", code="no_chat_template")
    raw = [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in body.messages]
    try:
        messages = check_messages(raw, "messages")
    except DataError as e:
        raise ApiError(400, str(e), param="messages", code="invalid_value") from None
    ids = _prompt_ids(service, service.chat.prompt(messages), body)
    samplings = [_sampling(service, body, service.context_len, service.chat.stop_ids, i) for i in range(body.n)]
    job = _Job(service, [ids] * body.n, samplings)
    base = {"id": f"chatcmpl-{secrets.token_hex(12)}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": body.model}
    if body.stream:
        def chunk(index, event):
            if index is None:
                return dict(base)
            delta, reason = ({"content": event.text}, None) if event.kind == "delta" else ({}, event.finish_reason)
            return base | {"choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}]}

        def head(i):
            return base | {"choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                        "finish_reason": None}]}
        return _stream(job, chunk, bool(body.stream_options and body.stream_options.include_usage), head)
    texts, dones = await _collect(job)
    return base | {"object": "chat.completion", "choices": [
        {"index": i, "message": {"role": "assistant", "content": texts[i]}, "logprobs": None,
         "finish_reason": dones[i].finish_reason} for i in range(len(texts))], "usage": _usage(dones)}


async def classify(registry: Registry, body: ClassifyBody):
    from lmforge.classify.metrics import predict_labels

    service = await asyncio.to_thread(registry.get, body.model)
    if not isinstance(service, ClassifierService):
        raise ApiError(400, f"The model '{body.model}' is a language model; use /v1/completions",
                       param="model", code="wrong_model_task")
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    if not texts:
        raise ApiError(400, "input is an empty list", param="input", code="invalid_value")
    proba = await asyncio.wrap_future(service.classify(texts))
    labels = predict_labels(proba, service.clf.cfg.eval.threshold)
    return {"object": "list", "model": body.model, "data": [
        {"object": "classification", "index": i, "label": service.labels[int(c)],
         "probabilities": {name: float(p) for name, p in zip(service.labels, row)}}
        for i, (c, row) in enumerate(zip(labels, proba))]}


def router(registry: Registry, api_key: str | None = None) -> APIRouter:
    """The /v1 routes over `registry`; every route checks the API key when one is set."""
    r = APIRouter(prefix="/v1", dependencies=[Depends(api_key_check(api_key))])

    @r.get("/models")
    def list_models():
        paths = registry.paths()
        return {"object": "list", "data": [model_card(n, p, registry.loaded.get(n)) for n, p in paths.items()]}

    @r.get("/models/{name}")
    def get_model(name: str):
        path = registry.paths().get(name)
        if path is None:
            raise ApiError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
        return model_card(name, path, registry.loaded.get(name))

    @r.post("/completions")
    async def post_completions(body: CompletionBody):
        return await completions(registry, body)

    @r.post("/chat/completions")
    async def post_chat_completions(body: ChatBody):
        return await chat_completions(registry, body)

    @r.post("/classify")
    async def post_classify(body: ClassifyBody):
        return await classify(registry, body)

    return r


def create_app(registry: Registry, api_key: str | None = None) -> FastAPI:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        registry.close()

    app = FastAPI(title="lmforge", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.include_router(router(registry, api_key))

    @app.get("/health")
    def health():
        return {"status": "ok"}

    return app
