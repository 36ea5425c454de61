"""The gateway's error answers, in Walrus's envelope (``google.rpc.Status`` style).

``{"error": {"code": 404, "status": "NOT_FOUND", "message": "...", "details": [{"@type":
"ErrorInfo", "reason": "BLOB_NOT_FOUND", "domain": "gateway.walrusfs", "metadata": {...}}]}}``

``status`` is the canonical name of the HTTP code (as Walrus's ``StatusCode`` spells them),
``reason`` the machine-readable cause; clients should branch on ``reason``.
"""

from __future__ import annotations

import json
from typing import Any

DOMAIN = "gateway.walrusfs"

#: HTTP code -> the status string Walrus (and google.rpc) use for it; codes Walrus has no
#: name for get the nearest google.rpc one (410: DATA_LOSS, an inconsistently encoded blob).
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "DEADLINE_EXCEEDED",
    410: "DATA_LOSS",
    413: "PAYLOAD_TOO_LARGE",
    416: "RANGE_NOT_SATISFIABLE",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


class ApiError(Exception):
    """An error answer: HTTP ``code``, machine-readable ``reason``, a message and optional metadata and headers."""

    def __init__(self, code: int, reason: str, message: str, metadata: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = metadata or {}
        self.headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        """The JSON body."""
        return {"error": {
            "code": self.code,
            "status": STATUS_NAMES.get(self.code, "UNKNOWN"),
            "message": self.message,
            "details": [{"@type": "ErrorInfo", "reason": self.reason, "domain": DOMAIN, "metadata": self.metadata}],
        }}

    def body(self) -> bytes:
        """The JSON body as bytes."""
        return json.dumps(self.envelope()).encode()
