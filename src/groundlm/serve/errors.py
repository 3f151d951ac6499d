"""Errors in the OpenAI shape: `{"error": {"message", "type", "param", "code"}}`.

Everything the server refuses is raised as an `APIError` and turned into that body by one handler, so clients
written for OpenAI (which read `error.message`) show our messages as they are.
"""

from __future__ import annotations

from starlette.responses import JSONResponse


class APIError(Exception):
    """A refused request: HTTP status, a message for people, and OpenAI's `type`, `param` and `code`."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
        code: str | None = None, headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    """The OpenAI error body."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(err: APIError) -> JSONResponse:
    """An `APIError` as a JSON response with its status and headers."""
    body = error_body(err.message, err.type, err.param, err.code)
    return JSONResponse(body, err.status, headers=err.headers)


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 `invalid_request_error`."""
    return APIError(400, message, param=param, code=code)
