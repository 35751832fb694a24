"""Fetch task images from Label Studio: uploads and local-file storage (relative URLs), http(s) URLs, data: URIs.

The credentials are Label Studio's: the `hostname` + `access_token` it sends in /setup (a legacy API
token, sent as `Token ...`), or a URL + key given to `evo serve` (a personal access token, a JWT, is
exchanged at /api/token/refresh/ for a short-lived `Bearer` access token). They are only ever sent
to Label Studio's own origin, never to a third-party image URL.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx
import numpy as np

from evo.data.sources._images import _UNREADABLE, decode
from evo.errors import DataError
from evo.serve.errors import ImageFetchError

MAX_IMAGE_BYTES = 32 * 2**20
TIMEOUT_S = 10.0


def decode_image(data: bytes, where: str) -> np.ndarray:
    """uint8 (H, W, 3) from encoded bytes, decoded as `evo predict` decodes files (so a correction learns
    the pixels predictions see); anything unreadable or too large is refused, naming `where`."""
    try:
        return decode(io.BytesIO(data), None, f"image {where}")
    except DataError as e:
        raise ImageFetchError(str(e)) from None
    except _UNREADABLE as e:
        raise ImageFetchError(f"image {where} is not a readable image file ({type(e).__name__}: {e})") from None


def _is_jwt(key: str) -> bool:
    return key.count(".") == 2 and key.startswith("eyJ")


@dataclass
class LabelStudioSource:
    """Where a project's images live: Label Studio's origin and the key to read them with."""

    hostname: str
    key: str | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.hostname or "")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ImageFetchError(f"Label Studio hostname {self.hostname!r} must be an http(s) URL, "
                                  "e.g. http://127.0.0.1:8080 (set HOST in Label Studio or pass --ls-url)")
        self.hostname = self.hostname.rstrip("/")
        self._access: str | None = None
        self._lock = threading.Lock()

    @property
    def origin(self) -> tuple[str, str]:
        parts = urlsplit(self.hostname)
        return parts.scheme, parts.netloc

    def _headers(self, client: httpx.Client, refresh: bool = False) -> dict[str, str]:
        if not self.key:
            return {}
        if not _is_jwt(self.key):
            return {"Authorization": f"Token {self.key}"}
        with self._lock:
            if self._access is None or refresh:
                r = client.post(f"{self.hostname}/api/token/refresh/", json={"refresh": self.key}, timeout=TIMEOUT_S)
                if r.status_code != 200 or "access" not in r.json():
                    raise ImageFetchError(f"Label Studio at {self.hostname} refused the personal access token "
                                          f"(HTTP {r.status_code}); create a new one in Account & Settings")
                self._access = r.json()["access"]
            return {"Authorization": f"Bearer {self._access}"}

    def fetch(self, client: httpx.Client, url: object) -> np.ndarray:
        if not isinstance(url, str) or not url.strip():
            raise ImageFetchError(f"image URL {url!r} is empty or not a string")
        if url.startswith("data:"):
            return decode_image(_data_uri(url), "data: URI")
        full = urljoin(self.hostname + "/", url) if url.startswith("/") else url
        parts = urlsplit(full)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ImageFetchError(f"image URL {url!r} is neither a Label Studio path (/data/...), "
                                  "an http(s) URL nor a data: URI")
        own = (parts.scheme, parts.netloc) == self.origin
        try:
            r = client.get(full, headers=self._headers(client) if own else {}, timeout=TIMEOUT_S)
            if r.status_code == 401 and own and self.key and _is_jwt(self.key):
                r = client.get(full, headers=self._headers(client, refresh=True), timeout=TIMEOUT_S)
        except httpx.HTTPError as e:
            raise ImageFetchError(f"image {full} could not be fetched ({type(e).__name__}: {e})") from None
        if r.status_code != 200:
            hint = (" ; Label Studio refused the token: enable legacy API tokens for the organization or pass "
                    "--ls-url/--ls-key to evo serve") if r.status_code in (401, 403) and own else ""
            raise ImageFetchError(f"image {full} could not be fetched: HTTP {r.status_code}{hint}")
        if len(r.content) > MAX_IMAGE_BYTES:
            raise ImageFetchError(f"image {full} is larger than {MAX_IMAGE_BYTES >> 20} MiB")
        return decode_image(r.content, full)


def _data_uri(uri: str) -> bytes:
    head, _, payload = uri.partition(",")
    if ";base64" not in head:
        raise ImageFetchError("a data: image URI must be base64-encoded (data:image/png;base64,...)")
    if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise ImageFetchError(f"data: image is larger than {MAX_IMAGE_BYTES >> 20} MiB")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageFetchError("a data: image URI holds invalid base64") from None
