"""The one failure a built-in tool reports on purpose: `ToolError`.

Notable choices:
- A leaf module (it imports only `alignchat.errors`), so each tool raises it without importing the
  registry that imports the tools; `alignchat.tools.registry` and `alignchat.tools` re-export it.
- A `UserError`: its message (one line) is meant for the model and the user, given back as the tool's
  result text `error: ...`.
"""
from __future__ import annotations

from ..errors import UserError


class ToolError(UserError):
    """A tool could not do what it was asked; the message (one line) is given to the model as the result."""
