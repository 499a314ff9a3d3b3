"""A small declarative layer over aiohttp routes: each operation states who may call it and
which models its path, query, body and answer are, so one declaration drives validation,
authorisation and the OpenAPI document, and they cannot drift apart.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, get_origin

from aiohttp import web
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from nvi.core.errors import Forbidden, InvalidRequest, NotFound, NviError
from nvi.core.model import Server


class Role(StrEnum):
    ADMIN = "admin"
    TENANT = "tenant"
    SERVER = "server"


@dataclass(frozen=True)
class Principal:
    """Who calls: `tenant` is a tenant token's tenant, or the tenant a server acts for (its
    token came along); `server` is the enrolled server of a server credential."""

    role: Role
    tenant: str | None = None
    server: Server | None = None

    def actor(self) -> dict[str, str]:
        """Who made a change, for the audit log."""
        who = {"role": str(self.role)}
        if self.tenant:
            who["tenant"] = self.tenant
        if self.server:
            who["server"] = self.server.name
        return who


@dataclass
class Call:
    """What a handler gets: the validated request."""

    request: web.Request
    principal: Principal | None
    path: dict[str, str]
    query: Any
    body: Any

    def scope(self) -> str | None:
        """The tenant a tenant token is confined to (None: every tenant)."""
        return self.principal.tenant if self.principal else None


class Error(BaseModel):
    """Every error answer's body."""

    error: str
    code: str | None = Field(
        None, description="A stable word for programs, where one applies (e.g. server_full)"
    )
    details: list[dict] | None = None


@dataclass(frozen=True)
class Header:
    """A request header an operation reads besides `Authorization` (empty counts as absent)."""

    name: str
    description: str
    required: bool = False


TENANT_TOKEN = Header(
    "X-Tenant-Token", "The tenant's own token: its consent to what a server does for it", True
)
"""The header of an `on_behalf` operation."""

ERRORS = {
    401: "No credential, or one this service does not know",
    403: "The credential may not do this",
    404: "What the path or the body names does not exist (or is not the caller's to see)",
    409: "The request conflicts with the current state",
    410: "The change log no longer holds that revision: read again from the current one",
    413: "The body is larger than the service takes",
    422: "The request breaks this document's schema, or a rule stated with it",
    500: "An unexpected failure; the service's log says more",
    503: "Something this service needs does not answer; try again later",
}
"""What each error status means, unless an operation says more precisely."""

Handler = Callable[[Call], Awaitable[Any]]
Authenticate = Callable[[web.Request], Awaitable[Principal]]
Audit = Callable[[web.Request, "Operation", Principal | None, int, str | None], None]
Refusal = Callable[[web.Request, Principal], NviError]


@dataclass
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    roles: frozenset[Role]
    query: type[BaseModel] | None
    body: type[BaseModel] | None
    response: Any
    status: int
    on_behalf: bool = False
    refusal: Refusal | None = None
    headers: tuple[Header, ...] = ()
    errors: dict[int, str] = field(default_factory=dict)

    def error_statuses(self, always: dict[int, str]) -> dict[int, str]:
        """Every error this operation can answer, and why: what its declaration implies
        (credentials, path, inputs), what the service always may, and what it declares."""
        implied: dict[int, str] = {}
        if self.roles:
            implied |= {401: ERRORS[401], 403: ERRORS[403]}
        if "{" in self.path:
            implied[404] = ERRORS[404]
        if "{" in self.path or self.query is not None or self.body is not None:
            implied[422] = ERRORS[422]
        if self.body is not None:
            implied[413] = ERRORS[413]
        explicit = {status: why or ERRORS[status] for status, why in self.errors.items()}
        return dict(sorted((implied | always | explicit).items()))


def _validation_error(error: ValidationError, where: str) -> InvalidRequest:
    details = json.loads(error.json(include_url=False, include_context=False, include_input=False))
    first = details[0]
    location = ".".join(str(part) for part in first["loc"]) or where
    failure = InvalidRequest(f"invalid {where}: {location}: {first['msg']}")
    failure.details = details
    return failure


class Api:
    """Operations of one service; `path_params` maps each path placeholder to its type."""

    def __init__(
        self,
        path_params: dict[str, Any],
        authenticate: Authenticate,
        audit: Audit | None = None,
        errors: dict[int, str] | None = None,
    ) -> None:
        """`errors`: statuses any operation may answer (a broken storage, an internal error)."""
        self.operations: list[Operation] = []
        self.errors = {status: why or ERRORS[status] for status, why in (errors or {}).items()}
        self.path_types = path_params
        self.path_params = {name: TypeAdapter(kind) for name, kind in path_params.items()}
        self.authenticate = authenticate
        self.audit = audit

    def route(
        self,
        method: str,
        path: str,
        summary: str,
        *,
        roles: set[Role] | None = None,
        query: type[BaseModel] | None = None,
        body: type[BaseModel] | None = None,
        response: Any = None,
        status: int = 200,
        on_behalf: bool = False,
        refusal: Refusal | None = None,
        headers: tuple[Header, ...] = (),
        errors: dict[int, str] | None = None,
    ) -> Callable[[Handler], Handler]:
        """Declare an operation; `roles=None` means no credential is needed. `on_behalf`: a
        server credential must come with the tenant's token (X-Tenant-Token). `refusal`: the
        error for a credential whose role may not call (it may also count the attempt).
        `headers`: the other headers it reads; `errors`: error statuses it answers beyond
        those its declaration implies (each with why, or "" for the usual words)."""

        def register(handler: Handler) -> Handler:
            self.operations.append(
                Operation(
                    method,
                    path,
                    handler,
                    summary,
                    frozenset(roles or ()),
                    query,
                    body,
                    response,
                    status,
                    on_behalf,
                    refusal,
                    ((TENANT_TOKEN,) if on_behalf else ()) + headers,
                    errors or {},
                )
            )
            return handler

        return register

    def add_routes(self, app: web.Application) -> None:
        for operation in self.operations:
            app.router.add_route(operation.method, operation.path, self._wrap(operation))

    def _wrap(self, operation: Operation) -> Callable[[web.Request], Awaitable[web.Response]]:
        answer = TypeAdapter(operation.response) if operation.response is not None else None

        async def handle(request: web.Request) -> web.Response:
            if self.audit is None or request.method == "GET":
                return await respond(request)
            principal: list[Principal] = []
            try:
                response = await respond(request, principal)
            except NviError as error:
                status = getattr(error, "status", 500)
                self.audit(request, operation, next(iter(principal), None), status, str(error))
                raise
            self.audit(request, operation, next(iter(principal), None), response.status, None)
            return response

        async def respond(
            request: web.Request, seen: list[Principal] | None = None
        ) -> web.Response:
            principal = None
            if operation.roles:
                principal = await self.authenticate(request)
                if seen is not None:
                    seen.append(principal)
                if principal.role not in operation.roles:
                    if operation.refusal is not None:
                        raise operation.refusal(request, principal)
                    raise Forbidden(f"a {principal.role} credential may not: {operation.summary}")
                if operation.on_behalf and principal.tenant is None:
                    raise Forbidden(
                        f"{operation.summary}: needs the tenant's token too (X-Tenant-Token)"
                    )
            path = self._path(request)
            scope = principal.tenant if principal else None
            if scope and path.get("tenant", scope) != scope:
                raise NotFound(f"no tenant {path['tenant']!r}")
            call = Call(request, principal, path, self._query(operation, request), None)
            if operation.body is not None:
                raw = await request.read()
                try:
                    call.body = operation.body.model_validate_json(raw)
                except ValidationError as error:
                    raise _validation_error(error, "body") from None
            result = await operation.handler(call)
            if answer is None:
                return web.Response(status=operation.status)
            return web.Response(
                status=operation.status,
                body=answer.dump_json(result),
                content_type="application/json",
            )

        return handle

    def _path(self, request: web.Request) -> dict[str, str]:
        values = {}
        for name, value in request.match_info.items():
            try:
                values[name] = self.path_params[name].validate_python(value)
            except ValidationError as error:
                raise _validation_error(error, f"{name} in path") from None
        return values

    @staticmethod
    def _query(operation: Operation, request: web.Request) -> Any:
        if operation.query is None:
            return None
        data: dict[str, Any] = {}
        for key in request.query:
            field = operation.query.model_fields.get(key)
            many = field is not None and get_origin(field.annotation) is list
            data[key] = request.query.getall(key) if many else request.query[key]
        try:
            return operation.query.model_validate(data)
        except ValidationError as error:
            raise _validation_error(error, "query") from None

    def openapi(
        self, title: str, version: str, description: str, servers: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """The OpenAPI 3.1 document of every declared operation; `servers` as shipped (a
        running service answers with its own URL instead, see `served`)."""
        components: dict[str, Any] = {}

        def schema(
            kind: Any, mode: Literal["validation", "serialization"] = "serialization"
        ) -> dict[str, Any]:
            generated = TypeAdapter(kind).json_schema(
                ref_template="#/components/schemas/{model}", mode=mode
            )
            components.update(generated.pop("$defs", {}))
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                components[kind.__name__] = generated
                return {"$ref": f"#/components/schemas/{kind.__name__}"}
            return generated

        error = schema(Error)
        paths: dict[str, Any] = {}
        for op in self.operations:
            parameters = [
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "schema": schema(self.path_types[name], "validation"),
                }
                for name in re.findall(r"{(\w+)}", op.path)
            ]
            if op.query is not None:
                parameters += _query_parameters(op.query, components)
            parameters += [
                {
                    "name": header.name,
                    "in": "header",
                    "required": header.required,
                    "description": header.description,
                    "schema": {"type": "string"},
                }
                for header in op.headers
            ]
            entry: dict[str, Any] = {
                "operationId": op.handler.__name__,
                "summary": op.summary,
                "parameters": parameters,
                "security": [{"bearerAuth": []}] if op.roles else [],
                "responses": {},
            }
            if op.roles:
                entry["description"] = "Credentials: " + ", ".join(sorted(op.roles)) + "."
            if op.body is not None:
                entry["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": schema(op.body, "validation")}},
                }
            success: dict[str, Any] = {"description": "Success"}
            if op.response is not None:
                success["content"] = {"application/json": {"schema": schema(op.response)}}
            entry["responses"][str(op.status)] = success
            for status, why in op.error_statuses(self.errors).items():
                entry["responses"][str(status)] = error_response(status, why, error)
            paths.setdefault(op.path, {})[op.method.lower()] = entry
        return {
            "openapi": "3.1.0",
            "info": {"title": title, "version": version, "description": description},
            "servers": servers,
            "paths": paths,
            "components": {
                "schemas": components,
                "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            },
        }


def error_response(status: int, why: str, schema: dict[str, Any]) -> dict[str, Any]:
    """An error answer's entry: the `Error` body; a 401 also names the scheme to use."""
    entry: dict[str, Any] = {
        "description": why,
        "content": {"application/json": {"schema": schema}},
    }
    if status == 401:
        entry["headers"] = {
            "WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}
        }
    return entry


def _optional(prop: dict[str, Any]) -> dict[str, Any]:
    """A query field's schema without its `null` branch: a query string has no null, an
    optional parameter is simply left out."""
    prop = {key: value for key, value in prop.items() if not (key == "default" and value is None)}
    branches = [b for b in prop.get("anyOf", []) if b != {"type": "null"}]
    if "anyOf" in prop and len(branches) == 1:
        del prop["anyOf"]
        prop = branches[0] | prop
    elif "anyOf" in prop:
        prop["anyOf"] = branches
    return prop


def _query_parameters(model: type[BaseModel], components: dict[str, Any]) -> list[dict[str, Any]]:
    """One parameter per field; a model bound by cross-field rules (oneOf, allOf...) is one
    object parameter instead (form style, exploded: the same query string), since only a
    schema of the whole can state a rule between its fields."""
    generated = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(generated.pop("$defs", {}))
    generated["properties"] = {
        name: _optional(prop) for name, prop in generated["properties"].items()
    }
    if any(key in generated for key in ("oneOf", "anyOf", "allOf", "not", "if")):
        components[model.__name__] = generated
        return [
            {
                "name": "query",
                "in": "query",
                "required": True,
                "style": "form",
                "explode": True,
                "schema": {"$ref": f"#/components/schemas/{model.__name__}"},
            }
        ]
    parameters = []
    for name, prop in generated["properties"].items():
        required = name in generated.get("required", [])
        parameter = {"name": name, "in": "query", "schema": prop, "required": required}
        if prop.get("type") == "array":
            parameter |= {"style": "form", "explode": True}
        parameters.append(parameter)
    return parameters


def served(document: dict[str, Any]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The handler of `/v1/openapi.json`: the document, its `servers` the URL it was asked at
    (so a client generated from a live service talks to that service)."""

    async def handler(request: web.Request) -> web.Response:
        origin = f"{request.scheme}://{request.host}"
        return web.json_response(document | {"servers": [{"url": origin}]})

    return handler
