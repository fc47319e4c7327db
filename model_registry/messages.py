"""One-line messages for errors a user caused, shared by every command line and the service.

pydantic's own `str(ValidationError)` spans several lines with links; a CLI error is one line
on stderr (DESIGN §6) and an HTTP `detail` one string.
"""

from __future__ import annotations

from pydantic import ValidationError


def one_line(exc: BaseException, limit: int = 300) -> str:
    """'where: what; where: what' for a ValidationError, else the first line of the message."""
    if isinstance(exc, ValidationError):
        text = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or 'value'}: {e.get('msg', 'invalid')}"
            for e in exc.errors()
        )
    else:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
