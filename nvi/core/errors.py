"""The exception type the CLI turns into a one-line message and a non-zero exit, and the
HTTP failures every REST service answers with (the REST framework raises them)."""

from typing import Any


class NviError(Exception):
    """A failure a user can act on; its message is shown as-is, without a traceback.
    `code`, where set, is a stable word a program can act on (the message may change)."""

    code: str | None = None


class HttpError(NviError):
    """A failure a REST service answers with `status` (and a JSON body saying why)."""

    status = 400


class InvalidRequest(HttpError):
    status = 422
    details: list[dict[str, Any]] | None = None  # one entry per failed field, when validated


class Unauthorized(HttpError):
    status = 401


class Forbidden(HttpError):
    status = 403


class NotFound(HttpError):
    status = 404
