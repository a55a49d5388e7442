"""Field types shared by every request model of the server (API, UI and library routes).

Notable choices:
- JSON may carry a lone UTF-16 surrogate (`"\\ud800"`), which Python decodes into a `str` that cannot be
  encoded as UTF-8. Such text would fail later, deep in the tokenizer or the database, as a 500. `Text`
  refuses it during validation, so the client gets a 400 that names the field.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def check_text(value: str) -> str:
    """Return `value` if it is valid Unicode text (encodable as UTF-8); raise ValueError otherwise."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = value[e.start]
        raise ValueError(f"contains a lone surrogate (\\u{ord(bad):04x}) at character {e.start}; "
                         f"text must be valid Unicode") from None
    return value


Text = Annotated[str, AfterValidator(check_text)]
