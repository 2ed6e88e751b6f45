"""The API key on every route of `vllm serve`, not only the ones vLLM guards.

vLLM's own check (--api-key / VLLM_API_KEY; vllm/entrypoints/serve/middleware/authenticate.py in 0.33.0) covers
paths under /v1, /v2, /inference and /cohere only: POST /invocations (SageMaker's route, which runs chat and
completions), /tokenize, /detokenize, /metrics, /scale_elastic_ep, /pause, /sleep, /collective_rpc (dev mode) and
the rest answer anyone. vLLM has no setting that widens it. Its --middleware option loads an ASGI middleware class by
import path and adds it outermost; the image's entrypoint passes this one whenever VLLM_API_KEY is set:

    PYTHONPATH=/opt/r1kit/python vllm serve MODEL ... --middleware r1kit_keyguard.KeyOnEveryRoute

Every HTTP request and every WebSocket handshake must carry `Authorization: Bearer KEY` (vLLM's own form, the one
OpenAI clients send), except:
- GET and HEAD /health, which the image's and the stacks' healthchecks call; it answers 200 or 503, nothing more;
- a CORS preflight (OPTIONS with Origin and Access-Control-Request-Method): vLLM's CORS middleware answers it
  itself, without reaching a route, and browsers never send a key with it.
Anything else without the key: 401 {"error": "Unauthorized"}, as vLLM answers on /v1. The key comes from
VLLM_API_KEY (the entrypoint reads it from VLLM_API_KEY_FILE); with none, the middleware refuses to start rather
than serve open. Standard library only: it must import in vLLM's process before anything else.
"""

from __future__ import annotations

import hashlib
import os
import secrets

# Route paths (after the root path, as Starlette routes them) open without the key, with the methods allowed there.
OPEN = {"/health": frozenset({"GET", "HEAD"})}
UNAUTHORIZED = b'{"error":"Unauthorized"}'


def route_path(scope: dict) -> str:
    """The path Starlette's router matches (starlette._utils.get_route_path): scope["path"] less the root path."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root):] if path[len(root)] == "/" else path


def _headers(scope: dict) -> dict[bytes, bytes]:
    """The first value of each header (lower-cased names): an attacker's second Authorization header changes nothing."""
    out: dict[bytes, bytes] = {}
    for name, value in scope.get("headers", []):
        out.setdefault(name.lower(), value)
    return out


class KeyOnEveryRoute:
    """ASGI middleware: 401 on every route but GET/HEAD /health without the key (see the module's docstring)."""

    def __init__(self, app, keys: list[str] | None = None) -> None:
        keys = [k for k in (keys if keys is not None else [os.environ.get("VLLM_API_KEY", "")]) if k]
        if not keys:
            raise RuntimeError("r1kit_keyguard: VLLM_API_KEY is empty: refusing to serve every route without a key")
        self.app = app
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    def allowed(self, scope: dict) -> bool:
        method = scope.get("method", "GET") if scope["type"] == "http" else "GET"
        if method in OPEN.get(route_path(scope), ()):
            return True
        headers = _headers(scope)
        if method == "OPTIONS" and b"origin" in headers and b"access-control-request-method" in headers:
            return True
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        digest = hashlib.sha256(token.encode("latin-1")).digest()
        match = False
        for known in self._digests:  # every key compared, in constant time
            match |= secrets.compare_digest(digest, known)
        return match

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allowed(scope):
            await self.app(scope, receive, send)
            return
        start = {"status": 401, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(UNAUTHORIZED)).encode()),
                                            (b"www-authenticate", b"Bearer")]}
        if scope["type"] == "http":
            await send({"type": "http.response.start", **start})
            await send({"type": "http.response.body", "body": UNAUTHORIZED})
        elif "websocket.http.response" in scope.get("extensions", {}):
            await send({"type": "websocket.http.response.start", **start})
            await send({"type": "websocket.http.response.body", "body": UNAUTHORIZED})
        else:  # a server without the denial-response extension: closing before accept answers 403
            await send({"type": "websocket.close", "code": 1008})
