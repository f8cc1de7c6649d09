"""The one error tree of docchat, mapped to PROTOCOL.md's error table.

    DocchatError                500 internal
    ├── BadRequest              400 bad_request
    ├── Forbidden               403 forbidden
    ├── NotFound                404 not_found
    ├── Conflict                409 conflict
    ├── TooLarge                413 too_large
    ├── RateLimited             429 rate_limited   (carries retry_after_ms)
    └── Unavailable             503 unavailable
"""

from __future__ import annotations


from .models import Wire


class DocchatError(Exception):
    """Base error; `code` and `type` are PROTOCOL.md's; the message is safe to show a client."""

    code = 500
    type = "internal"
    default_message = "internal error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)

    @property
    def message(self) -> str:
        return str(self.args[0])


class BadRequest(DocchatError):
    code, type, default_message = 400, "bad_request", "bad request"


class Forbidden(DocchatError):
    code, type, default_message = 403, "forbidden", "no access"


class NotFound(DocchatError):
    code, type, default_message = 404, "not_found", "not found"


class Conflict(DocchatError):
    code, type, default_message = 409, "conflict", "conflict"


class TooLarge(DocchatError):
    code, type, default_message = 413, "too_large", "too large"


class RateLimited(DocchatError):
    code, type, default_message = 429, "rate_limited", "rate limited"

    def __init__(self, retry_after_ms: int, message: str | None = None) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class Unavailable(DocchatError):
    code, type, default_message = 503, "unavailable", "service unavailable, retry"


class NotOwner(Unavailable):
    """This host no longer owns the request's partition: it stores nothing and sends no reply, since
    the partition's owner (which the server also sends the request to) answers it."""


BY_CODE: dict[int, type[DocchatError]] = {
    cls.code: cls for cls in (DocchatError, BadRequest, Forbidden, NotFound, Conflict, TooLarge, RateLimited, Unavailable)
}


class ErrorDetail(Wire):
    code: int
    type: str
    message: str
    retry_after_ms: int | None = None


class ErrorBody(Wire):
    """`{error: {code, type, message}}`: the body of every failed request."""

    error: ErrorDetail


def error_body(exc: DocchatError) -> ErrorDetail:
    """The wire detail for an error; internal errors say no more than 'internal error'."""
    if type(exc) is DocchatError:
        return ErrorDetail(code=500, type="internal", message=DocchatError.default_message)
    retry = exc.retry_after_ms if isinstance(exc, RateLimited) else None
    return ErrorDetail(code=exc.code, type=exc.type, message=exc.message, retry_after_ms=retry)


def from_detail(detail: ErrorDetail) -> DocchatError:
    """Rebuild the client-side exception for a received error body."""
    cls = BY_CODE.get(detail.code, DocchatError)
    if cls is RateLimited:
        return RateLimited(detail.retry_after_ms or 0, detail.message)
    return cls(detail.message)
