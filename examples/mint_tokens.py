"""A token backend: ``GET /token?user=alice`` answers a JWT that connects as peer ``alice``.

Browsers and bots should never hold your app's secret key. Your backend holds it and hands
each signed-in user a short-lived JWT instead; the client passes it to roomwire
(``MeteredPeer(token_provider=...)``, ``?token=`` for the JS SDK) and gets the JWT's ``sub``
as its peer id. This is that backend, in a few lines of aiohttp::

    export ROOMWIRE_SECRET_KEY="$(roomwire keys show-secret)"   # sk_id_...:sk_secret_...
    python examples/mint_tokens.py --port 8080 --ttl 600 --channel 'rooms/**'
    curl 'http://127.0.0.1:8080/token?user=alice'
    # {"token": "eyJ...", "expiresAt": 1764700000}

The secret key comes from the environment only (a command-line argument is visible to every
user of the machine in ``ps``), and the program never prints or logs it, nor the tokens it
mints. This endpoint mints a token for whoever asks: in your app, put it behind your own
login and take the user name from the session, not from the query string.

**How it signs (the primary way).** It signs the JWT itself with PyJWT, as roomwire expects
(docs/protocol.md, "Authentication and JWTs"): HS256, header ``kid`` = the key id
``sk_id_...``, HMAC key = the UTF-8 bytes of the whole ``sk_secret_...`` string, claims
``sub`` (the peer id), ``iat``, ``exp`` and, with ``--channel``, ``channels`` (patterns that
narrow the key's own). No round trip to roomwire per token, so logins keep working while
the realtime server restarts::

    jwt.encode({"sub": user, "iat": now, "exp": now + ttl}, sk_secret,
               algorithm="HS256", headers={"kid": sk_id})

**The variant: ask roomwire.** With ``--via-rest http://127.0.0.1:7880`` it asks roomwire's
REST control plane instead (``POST /v1/tokens``, ``Authorization: Bearer
sk_id_...:sk_secret_...``, body ``{"peerId", "expiresInSec", "channels"?}``), which checks
the key's scope and peer id pattern when minting rather than at connect time (see
``mint_via_rest`` below; the same request with curl is in docs/operations.md).

Answers: 200 ``{"token", "expiresAt"}`` (``exp`` in Unix seconds); 400 ``invalid_request``
for a missing or malformed ``user``; 502 ``upstream_error`` when roomwire refuses the REST
request (its error code is passed on in the message).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
from aiohttp import web

#: Stricter than roomwire's peer id rule (1-128 printable ASCII) on purpose: user names end
#: up in logs and UIs, where spaces and quotes are a nuisance.
USER_RE = re.compile(r"[A-Za-z0-9._@-]{1,64}")
HTTP = web.AppKey("http", aiohttp.ClientSession)


class SecretKey:
    """``sk_id_...:sk_secret_...``, as ``roomwire keys show-secret`` prints it."""

    def __init__(self, pair: str) -> None:
        key_id, sep, secret = pair.strip().partition(":")
        if not sep or not key_id.startswith("sk_id_") or not secret.startswith("sk_secret_"):
            raise ValueError("ROOMWIRE_SECRET_KEY must be sk_id_...:sk_secret_... "
                             "(the output of `roomwire keys show-secret`)")
        self.key_id = key_id
        self._secret = secret

    @property
    def secret(self) -> str:
        return self._secret

    def __repr__(self) -> str:  # a stray print or traceback shows the id, never the secret
        return f"SecretKey({self.key_id!r})"


def mint_locally(key: SecretKey, user: str, ttl: int,
                 channels: list[str] | None) -> tuple[str, int]:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user, "iat": now, "exp": now + ttl}
    if channels:
        claims["channels"] = channels
    token = jwt.encode(claims, key.secret, algorithm="HS256", headers={"kid": key.key_id})
    return token, now + ttl


class UpstreamError(Exception):
    """roomwire refused the REST request (or could not be reached)."""


async def mint_via_rest(http: aiohttp.ClientSession, base_url: str, key: SecretKey,
                        user: str, ttl: int, channels: list[str] | None) -> tuple[str, int]:
    body: dict[str, Any] = {"peerId": user, "expiresInSec": ttl}
    if channels:
        body["channels"] = channels
    headers = {"Authorization": f"Bearer {key.key_id}:{key.secret}"}
    try:
        async with http.post(f"{base_url.rstrip('/')}/v1/tokens", json=body,
                             headers=headers) as resp:
            answer = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise UpstreamError(f"roomwire could not be asked: {type(exc).__name__}") from None
    if resp.status != 200 or not isinstance(answer, dict):
        code = answer.get("error") if isinstance(answer, dict) else None
        raise UpstreamError(f"roomwire answered {resp.status} {code or ''}".strip())
    token, exp = answer.get("token"), answer.get("expiresAt")
    if not isinstance(token, str) or not isinstance(exp, int):
        raise UpstreamError("roomwire answered without a token")
    return token, exp


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


def make_app(key: SecretKey, *, ttl: int, channels: list[str] | None = None,
             rest_url: str | None = None) -> web.Application:
    app = web.Application()

    async def token(request: web.Request) -> web.Response:
        user = request.query.get("user", "")
        if not USER_RE.fullmatch(user):
            return error(400, "invalid_request",
                         "user must be 1 to 64 letters, digits or . _ @ -")
        if rest_url is None:
            tok, exp = mint_locally(key, user, ttl, channels)
        else:
            try:
                tok, exp = await mint_via_rest(app[HTTP], rest_url, key, user, ttl, channels)
            except UpstreamError as exc:
                return error(502, "upstream_error", str(exc))
        return web.json_response({"token": tok, "expiresAt": exp},
                                 headers={"Cache-Control": "no-store"})

    async def http_session(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            app[HTTP] = http
            yield

    app.router.add_get("/token", token)
    app.cleanup_ctx.append(http_session)
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Mint roomwire JWTs over HTTP: /token?user=NAME.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    p.add_argument("--port", type=int, default=8080, help="port (%(default)s; 0: any free)")
    p.add_argument("--ttl", type=int, default=3600,
                   help="token lifetime in seconds (default %(default)s, at most 86400)")
    p.add_argument("--channel", action="append", dest="channels", metavar="PATTERN",
                   help="restrict tokens to these channel patterns (repeatable)")
    p.add_argument("--via-rest", metavar="URL", default=None,
                   help="ask roomwire's POST /v1/tokens at this http(s) URL instead of signing")
    args = p.parse_args(argv)
    if not 1 <= args.ttl <= 86_400:
        p.error("--ttl must be between 1 and 86400 seconds")
    return args


async def serve(args: argparse.Namespace, key: SecretKey) -> None:
    app = make_app(key, ttl=args.ttl, channels=args.channels, rest_url=args.via_rest)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    how = f"asking {args.via_rest}" if args.via_rest else f"signing with {key.key_id}"
    print(f"minting tokens at http://{host}:{port}/token?user=NAME ({how})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        key = SecretKey(os.environ.get("ROOMWIRE_SECRET_KEY", ""))
    except ValueError as exc:
        print(f"mint_tokens: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args, key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
