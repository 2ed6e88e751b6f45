"""The one Jinja environment: Dockerfiles and shell scripts, never HTML, and a missing variable is an error."""

from __future__ import annotations

from typing import Any

import jinja2


def environment(loader: jinja2.BaseLoader | None = None, **overrides: Any) -> jinja2.Environment:
    """Strict (an undefined variable stops the render), no autoescape, whitespace as written around block tags."""
    options: dict[str, Any] = dict(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    return jinja2.Environment(**{**options, **overrides})
