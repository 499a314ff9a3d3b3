"""Agent failures, each with the HTTP status the API answers with.

Directory errors (`federation.errors`) carry a status too and pass through unchanged: a bad
tenant token or an address already used in the tenant is the caller's problem, not the agent's.
"""

from __future__ import annotations

from nvi.core.errors import NviError


class AgentError(NviError):
    status = 400


class Invalid(AgentError):
    status = 422


class Unauthorized(AgentError):
    status = 401


class Forbidden(AgentError):
    status = 403


class NotFound(AgentError):
    status = 404


class Conflict(AgentError):
    status = 409


class Full(Conflict):
    """This server has no room for the node (CPUs, memory or locators); another may have."""

    code = "server_full"


class Failed(AgentError):
    """The server itself failed (Docker, OVS, the kernel); the change was rolled back."""

    status = 500


class Unavailable(AgentError):
    """Something the agent needs to answer (the directory) cannot be reached; retry later."""

    status = 503
