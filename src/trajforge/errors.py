"""trajforge's exceptions. The server turns them into JSON errors, the CLI into clean messages."""

from __future__ import annotations


class TrajforgeError(Exception):
    """Base of every error trajforge raises on purpose; ``status`` is the HTTP status it maps to."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(TrajforgeError):
    """A request or argument has a wrong value; ``field`` names it."""

    status = 422
    code = "invalid"


class InvalidQuery(TrajforgeError):
    """A full-text search string cannot be parsed."""

    status = 400
    code = "invalid_search"

    def __init__(self, message: str, field: str | None = "search") -> None:
        super().__init__(message, field)


class Unauthorized(TrajforgeError):
    """The bearer token is missing or wrong."""

    status = 401
    code = "unauthorized"


class Unavailable(TrajforgeError):
    """What was asked for cannot run on this machine (a backend, an optimizer not built yet)."""

    status = 400
    code = "unavailable"


class NotFound(TrajforgeError):
    """The thing asked for does not exist."""

    status = 404
    code = "not_found"


class Conflict(TrajforgeError):
    """The request contradicts the current state (e.g. cancelling a finished job)."""

    status = 409
    code = "conflict"


class TooLarge(TrajforgeError):
    """A request body is over the size limit."""

    status = 413
    code = "too_large"


class StoreError(TrajforgeError):
    """The store could not be opened or written (bad URL, unreachable database)."""

    status = 503
    code = "store_unavailable"


class LMError(TrajforgeError):
    """A model endpoint failed or answered with something that is not a chat completion."""

    status = 502
    code = "lm_error"


class Cancelled(Exception):
    """A job body stopped because its job was cancelled (not an error: the job ends ``cancelled``)."""
