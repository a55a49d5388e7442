"""Errors that reach the user as a clear one-line message instead of a traceback.

Every stage raises `UserError` (or a subclass) for problems with the user's input: a missing or corrupt
file, a malformed record, a prompt that does not fit the context. The CLI prints the message and exits 2;
the HTTP server maps them to 4xx responses.
"""


class UserError(Exception):
    """The user's input is at fault; the message says what is wrong and where."""


class CheckpointError(UserError):
    """A model file or checkpoint directory is missing, truncated or corrupt; the message names the file."""


class ContextLengthError(UserError):
    """A prompt (plus the requested completion) does not fit in the model's context window."""
