"""Directory failures, each with the HTTP status the service answers and the client raises."""

from __future__ import annotations

from nvi.core.errors import NviError


class DirectoryError(NviError):
    """Base class: `status` is the HTTP status this failure is answered with."""

    status = 400


class InvalidRequest(DirectoryError):
    status = 422


class Unauthorized(DirectoryError):
    status = 401


class Forbidden(DirectoryError):
    status = 403


class NotFound(DirectoryError):
    status = 404


class Conflict(DirectoryError):
    status = 409


class FloatingTaken(Conflict):
    """The floating address is attached to another node (of any tenant)."""

    code = "floating_taken"


class FloatingAttached(Conflict):
    """The node has another floating address already: detach that one first."""

    code = "floating_attached"


class Gone(DirectoryError):
    """The change stream no longer holds events that old: the reader must resynchronise."""

    status = 410


class Unavailable(DirectoryError):
    """The storage backend cannot be reached; retrying later may work."""

    status = 503


BY_STATUS: dict[int, type[DirectoryError]] = {
    cls.status: cls
    for cls in (InvalidRequest, Unauthorized, Forbidden, NotFound, Conflict, Gone, Unavailable)
}


def from_status(status: int, message: str, code: str | None = None) -> DirectoryError:
    """The exception a client raises for an error answer, with the answer's stable `code`."""
    error = BY_STATUS.get(status, DirectoryError)(message)
    error.status, error.code = status, code
    return error
