"""What every NVI REST service answers on failure: a JSON body with a message, the status the
error names, and never a traceback. Shared by the directory and the host agent."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from nvi.core.errors import NviError


def json_errors(errors: type[NviError], log: logging.Logger, where: str) -> Middleware:
    """Middleware turning `errors` (each with a `status`, 500 if none) and aiohttp's own 4xx
    into JSON answers; anything else is logged and answered 500, pointing at `where`."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except errors as error:
            status = getattr(error, "status", 500)
            body: dict = {"error": str(error)}
            if error.code:
                body["code"] = error.code
            if details := getattr(error, "details", None):
                body["details"] = details
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return web.json_response(body, status=status, headers=headers)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            headers = {k: v for k, v in error.headers.items() if k in ("Allow",)}
            return web.json_response({"error": error.reason}, status=error.status, headers=headers)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unexpected failure answering %s %s", request.method, request.path)
            return web.json_response({"error": f"internal error; see {where}"}, status=500)

    return middleware
