"""Personal data out of logs, moderation events and exports, with the cleaning stage's detectors.

Notable choices:
- One definition of what counts as personal data: `alignchat.data.clean.scrub_pii` (e-mail addresses;
  Chinese mobile and landline, North American and international phone numbers; Chinese resident ID
  numbers with their checksum; US SSNs), which replaces each with a placeholder (`<EMAIL>`, `<PHONE>`,
  `<ID>`). `redact` and `redact_obj` apply it to a string and to every string inside JSON-like data.
- Logs are redacted where records are made: `install_log_redaction` wraps the logging record factory,
  so every record of every logger in the process (ours, uvicorn's access and error logs, libraries')
  carries its message already formatted and scrubbed before any handler sees it. A handler-level
  `PIIRedactingFilter` does the same for handlers configured elsewhere.
"""
from __future__ import annotations

import logging
import threading

from ..data.clean import scrub_pii


def redact(text: str) -> str:
    return scrub_pii(text)[0] if text else text


def redact_obj(obj):
    """Every string inside dicts/lists/tuples redacted (keys included)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact_obj(k): redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_obj(v) for v in obj)
    return obj


def _scrub_record(record: logging.LogRecord) -> None:
    if getattr(record, "_pii_scrubbed", False):
        return
    try:
        msg = record.getMessage()
    except Exception:  # a malformed record: leave it to logging's own error path
        return
    record.msg, record.args = redact(msg), None
    if record.exc_info and not record.exc_text:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    record._pii_scrubbed = True


class PIIRedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        _scrub_record(record)
        return True


_installed = False
_lock = threading.Lock()


def install_log_redaction() -> None:
    """Scrub personal data from every log record this process makes (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args, **kwargs):
            record = previous(*args, **kwargs)
            _scrub_record(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True
