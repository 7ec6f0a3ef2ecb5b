"""Errors the Kube methods raise (the project's own, never the client library's) and their helpers."""

from __future__ import annotations

import json

from kubernetes.client.rest import ApiException


class Conflict(Exception):
    """A write lost a race (resourceVersion or uid precondition, or the name is taken)."""


class PermanentError(Exception):
    """The API server refused a write for a reason a retry cannot fix (404 namespace, 403, 422)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _none_on_404(fn):
    try:
        return fn()
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _false_on_404(fn) -> bool:
    try:
        fn()
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def _ignore_409(fn) -> None:
    try:
        fn()
    except ApiException as exc:
        if exc.status != 409:
            raise


def _classify(exc: ApiException, what: str) -> Exception:
    """Permanent refusals become PermanentError (the issue is rolled back); the rest is retried."""
    if exc.status in (400, 403, 404, 422):
        return PermanentError(exc.status, f"{what}: {error_text(exc)}")
    return exc


def error_text(exc: Exception) -> str:
    """A short, token-free description of an API error."""
    if isinstance(exc, ApiException):
        try:
            return json.loads(exc.body).get("message", exc.reason)
        except Exception:
            return f"{exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
