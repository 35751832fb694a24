"""The HTTP surface: a Starlette/FastAPI app speaking Label Studio's ML backend protocol over a `Backend`.

Every body is read as bytes and parsed by evo (malformed JSON → 422 with the parser's message);
every refusal is `{"error": "..."}` with a 4xx; an unexpected failure is a 500 with one line, logged
with its traceback on the server only.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from evo.errors import EvoError
from evo.serve.backend import Backend
from evo.serve.errors import ServeError, Unauthorized
from evo.serve.protocol import parse_json

log = logging.getLogger("evo.serve")


def _authorised(header: str | None, token: str) -> bool:
    """`Bearer T`, `Token T`, or HTTP Basic with password T (what Label Studio's model auth sends)."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme in ("bearer", "token"):
        return hmac.compare_digest(value.strip().encode(), token.encode())
    if scheme == "basic":
        try:
            _, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        return hmac.compare_digest(password.encode(), token.encode())
    return False


def create_app(backend: Backend, token: str | None = None) -> FastAPI:
    app = FastAPI(title="evo ML backend", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.backend = backend

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token and not _authorised(request.headers.get("authorization"), token):
            return _error(Unauthorized(f"{request.url.path}: this evo backend needs its token: send "
                                       "'Authorization: Bearer <token>', or in Label Studio set the model's "
                                       "authentication to Basic with the token as password"))
        try:
            return await call_next(request)
        except Exception as e:  # answered here: Starlette's exception_handler(Exception) re-raises to the
            # server after replying, and uvicorn then drops the connection; never a traceback to the client
            log.exception("unexpected error on %s: %s: %s", request.url.path, type(e).__name__, e)
            return JSONResponse({"error": f"{request.url.path}: internal error ({type(e).__name__}); "
                                          "see the evo serve log"}, status_code=500)

    @app.exception_handler(EvoError)
    async def refused(request: Request, e: EvoError) -> JSONResponse:  # the engine's or the backend's refusal
        return _error(e)

    async def body(request: Request) -> dict[str, Any]:
        return parse_json(await request.body(), request.url.path)

    @app.get("/")
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return backend.health()

    @app.post("/setup")
    async def setup(request: Request) -> dict[str, Any]:
        return await run_in_threadpool(backend.setup, await body(request))

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        return await run_in_threadpool(backend.predict, await body(request))

    @app.get("/versions")
    async def versions() -> dict[str, Any]:
        return backend.versions()

    @app.post("/train")
    async def train(request: Request) -> dict[str, Any]:
        await body(request)
        return backend.train()

    @app.post("/webhook")
    async def webhook(request: Request) -> dict[str, Any]:
        return await run_in_threadpool(backend.webhook, await body(request))

    return app


def _error(e: EvoError) -> JSONResponse:
    status = e.status if isinstance(e, ServeError) else 422
    return JSONResponse({"error": str(e)}, status_code=status)
