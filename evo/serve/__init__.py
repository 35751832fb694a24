"""`evo serve`: a Label Studio ML backend over the corrections engine (evo.active).

    from evo.serve import open_backend, create_app
    backend = open_backend("runs/NAME")            # holds the run's writer lock until backend.close()
    app = create_app(backend, token="secret")      # an ASGI app: uvicorn.run(app, host="127.0.0.1", port=9090)

Label Studio calls /health, /setup, /predict, /versions, /train and /webhook (see protocol.py). Every
annotation becomes a correction (`correct`), an updated one replaces it, a deleted one is undone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from evo.serve.app import create_app
from evo.serve.backend import Backend, external_id
from evo.serve.errors import BadRequest, ImageFetchError, NotConnected, ServeError, Unauthorized
from evo.serve.images import LabelStudioSource

PROJECTS_FILE = "labelstudio.json"  # <run>/labelstudio.json: connected projects (config, hostname; no token)
__all__ = ["Backend", "BadRequest", "ImageFetchError", "LabelStudioSource", "NotConnected", "ServeError",
           "Unauthorized", "create_app", "external_id", "open_backend", "serve"]


def open_backend(run_dir: str | os.PathLike, ls_url: str | None = None, ls_key: str | None = None) -> Backend:
    """A Backend on the run's corrections engine, opened for writing (the run's writer lock is held)."""
    from evo.serve.engine import Corrections

    source = LabelStudioSource(ls_url, ls_key) if ls_url else None
    engine = Corrections.open(run_dir, write=True, command="serve")  # other writers are told who holds it
    try:
        return Backend(engine, source, projects_file=Path(run_dir) / PROJECTS_FILE, spool_parent=Path(run_dir))
    except BaseException:
        engine.close()
        raise


def serve(run_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 9090, token: str | None = None,
          ls_url: str | None = None, ls_key: str | None = None, threads: int = 1, say: Any = print) -> None:
    """Run the backend until interrupted; the engine (and its writer lock) is closed on the way out.

    `threads`: torch intra-op threads. One by default: a correction is a one-image forward, and on a
    busy machine a second OpenMP thread spin-waiting made it 40-60x slower (BENCHMARKS.md)."""
    import logging

    import torch
    import uvicorn

    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise BadRequest(f"--threads must be a positive integer; got {threads!r}")
    torch.set_num_threads(threads)
    _check_address(host, port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("evo.serve").setLevel(logging.INFO)  # one line per prediction/correction is serve's output
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per image fetched
    backend = open_backend(run_dir, ls_url, ls_key)
    try:
        say(f"evo serve: {run_dir} ({backend.engine.model_version}, {len(backend.engine.classes)} classes) on "
            f"http://{host}:{port}" + (" (token required)" if token else ""))
        uvicorn.run(create_app(backend, token), host=host, port=port, log_level="warning", access_log=False)
    finally:
        backend.close()
        backend.engine.close()


def _check_address(host: str, port: int) -> None:
    """Refuse an address that cannot be listened on before the run's writer lock is taken."""
    import socket

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise BadRequest(f"--port must be 0..65535; got {port!r}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ServeError(f"--host {host!r} is not an address this machine can listen on ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise ServeError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port, or stop "
                             "the process using it") from None
