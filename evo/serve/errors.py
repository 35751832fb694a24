"""Errors the server answers with a 4xx and one readable message (never a traceback)."""

from __future__ import annotations

from evo.errors import EvoError


class ServeError(EvoError):
    """A request the backend refuses; `status` is the HTTP code it answers with."""

    status = 400


class BadRequest(ServeError, ValueError):
    """Malformed JSON, an unknown task or annotation format, a config evo cannot answer for."""

    status = 422


class Unauthorized(ServeError):
    """A request without the token `evo serve` was started with."""

    status = 401


class NotConnected(ServeError):
    """A request for a project that never called /setup on this backend."""

    status = 404


class ImageFetchError(ServeError):
    """An image URL that cannot be fetched or decoded."""

    status = 422


class SpoolError(ServeError):
    """A bulk of annotations that cannot be held on disk until it is applied (e.g. the disk is full)."""

    status = 507
