"""Service configuration files: TOML, validated by a pydantic model, one-line errors."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from nvi.core.errors import NviError

M = TypeVar("M", bound=BaseModel)


def load_toml_model(path: Path, model: type[M], what: str = "config") -> M:
    """`model` read from the TOML file at `path`; any problem is one NviError line."""
    try:
        return model.model_validate(tomllib.loads(path.read_text()))
    except OSError as error:
        raise NviError(f"cannot read {what} {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise NviError(f"invalid {what} {path}: {error}") from None
    except ValidationError as error:
        reasons = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors(include_url=False)
        )
        raise NviError(f"invalid {what} {path}: {reasons}") from None


def write_secret(path: Path, secret: str) -> None:
    """A credential file: created readable by its owner only, and never over an existing one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secret + "\n")
