"""What a backend says is cleaned before a caller or a log line sees it.

- Secrets by value: every credential the gateway was configured with (provider API keys, the
  Consul token) is registered here when it is read, and any piece of it of `PIECE` or more
  characters is masked wherever it appears: a provider that echoes the key without its `sk-`
  prefix, after `Bearer `, or cut in two, leaks nothing longer than PIECE - 1 characters.
  Key-shaped strings that were never configured (`sk-...`) are masked too.
- Backend messages (`clean_message`): a model's Python traceback, Triton's "At:" stack and
  server file paths are kept out (they tell a caller the server's layout and say nothing it can
  act on); whitespace is folded and the text is bounded. The full text goes to the log at DEBUG.

Masking is on the error path and in log lines that are not per call (the access log carries no
backend text), so its cost (one set lookup per character of the text) does not touch the fast path.
"""

from __future__ import annotations

import logging
import re
import threading

PIECE = 8  # the shortest piece of a secret that is masked
MASK = "[redacted]"
MAX_BACKEND_MESSAGE = 512

log = logging.getLogger("meshgate.backend")

_KEYLIKE = re.compile(r"\b(sk|key|token)[-_][A-Za-z0-9_\-*]{6,}", re.IGNORECASE)
# A traceback starts here; everything after it is the server's, not the caller's.
_TRACEBACK = re.compile(r"Traceback \(most recent call last\)|\n\s*At:\s*\n|\n\s+File \"")
# An absolute file path of two or more parts (not a URL's path: no ':', '/' or word before it).
_PATH = re.compile(r"(?<![\w:/.\-])/(?:[\w.\-]+/)+([\w.\-]+)")
_SPACE = re.compile(r"\s+")
# The exception line of a traceback ("ValueError: bad input"), not indented.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*: \S")

_lock = threading.Lock()
_secrets: set[str] = set()
_pieces: frozenset[str] = frozenset()


def register_secret(value: str | None) -> None:
    """Mask `value` (and its pieces) from now on. Safe from any thread; cheap to repeat."""
    global _pieces
    if not value or len(value) < 4:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        width = min(PIECE, len(value))
        _pieces = frozenset(s[i : i + width] for s in _secrets for i in range(len(s) - width + 1))


def scrub(text: str) -> str:
    """`text` with every registered secret's pieces and key-shaped strings masked."""
    pieces = _pieces
    if pieces and len(text) >= 4:
        text = _mask_pieces(text, pieces)
    return _KEYLIKE.sub(MASK, text)


def _mask_pieces(text: str, pieces: frozenset[str]) -> str:
    widths = sorted({len(p) for p in pieces}, reverse=True)
    hidden = bytearray(len(text))
    found = False
    for width in widths:
        for i in range(len(text) - width + 1):
            if text[i : i + width] in pieces:
                hidden[i : i + width] = b"\x01" * width
                found = True
    if not found:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        if hidden[i]:
            while i < len(text) and hidden[i]:
                i += 1
            out.append(MASK)
        else:
            j = hidden.find(1, i)
            j = len(text) if j < 0 else j
            out.append(text[i:j])
            i = j
    return "".join(out)


def clean_message(text: str, limit: int = MAX_BACKEND_MESSAGE) -> str:
    """A backend's error text as a caller may see it: secrets masked, no traceback or server
    paths, one line, at most `limit` characters. The original goes to the log at DEBUG."""
    raw = text
    cut = _TRACEBACK.search(text)
    if cut is not None:  # keep what the traceback ends with: the exception and its message
        lines = [ln for ln in text[cut.start() :].splitlines() if _EXCEPTION_LINE.match(ln)]
        lines = [ln for ln in lines if "Traceback (most recent" not in ln]
        raised = f": {lines[-1].strip()}" if lines else ""
        text = text[: cut.start()].rstrip(" :\n") + raised + " (backend traceback omitted)"
    text = _PATH.sub(lambda m: "\u2026/" + m.group(1), text)
    text = scrub(_SPACE.sub(" ", text).strip())
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    if text != raw and log.isEnabledFor(logging.DEBUG):
        log.debug("backend message in full: %s", scrub(raw))
    return text


class ScrubFilter(logging.Filter):
    """A logging filter (on a handler) that masks configured secrets in every record, its
    traceback included. Loggers named in `skip` (the per-call access log) are not scanned."""

    def __init__(self, skip: tuple[str, ...] = ()) -> None:
        super().__init__()
        self._skip = skip

    def filter(self, record: logging.LogRecord) -> bool:
        pieces = _pieces
        if not pieces or record.name in self._skip:
            return True
        message = record.getMessage()
        clean = _mask_pieces(message, pieces)
        if clean != message or record.exc_info:
            record.msg, record.args = clean, None
            if record.exc_info and not record.exc_text:
                text = logging.Formatter().formatException(record.exc_info)
                record.exc_text = _mask_pieces(text, pieces)
                record.exc_info = None
        return True
