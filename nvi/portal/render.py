"""Pages from Jinja2 templates (nvi/portal/templates), escaped by default: every value a page
shows came from a tenant or a server, so none of it is trusted as markup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def page(env: jinja2.Environment, template: str, status: int = 200, **values: Any) -> web.Response:
    values = {"session": None, "notices": [], "refresh": None} | values
    body = env.get_template(template).render(**values)
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
