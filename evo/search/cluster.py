"""Start or join the Ray cluster that evaluates candidates; the dashboard binds to 127.0.0.1 by default."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from evo.errors import EvoError


class ClusterError(EvoError):
    """Ray could not be started or reached."""


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    dashboard_url: str | None
    cpus: float
    gpus: float
    nodes: int
    token_auth: bool = False


def connect(address: str | None = None, num_cpus: int | None = None, dashboard: bool = False,
            dashboard_port: int = 8265) -> ClusterInfo:
    """Join `address` (host:port of a running head) or start a local cluster; reuses an initialised one."""
    import ray

    if address:  # an unreachable head is an error even when this process already runs a cluster
        _check_reachable(address)
    if not ray.is_initialized():
        kwargs = {"log_to_driver": False, "configure_logging": True, "logging_level": "ERROR"}
        if address:
            kwargs["address"] = address
        else:
            kwargs.update(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                          dashboard_port=dashboard_port)
        try:
            ctx = ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ClusterError(f"cannot {'join Ray at ' + address if address else 'start a local Ray cluster'}: "
                               f"{str(e).splitlines()[0]}") from None
        url = getattr(ctx, "dashboard_url", None)
    else:
        url = None
    res = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    dash = f"http://{url}" if url and not str(url).startswith("http") else url
    return ClusterInfo(address or "local", dash or None, res.get("CPU", 0.0), res.get("GPU", 0.0), nodes,
                       token_auth=_token_auth())


def _token_auth() -> bool:
    """Whether this Ray cluster requires its auth token (what the dashboard message must say)."""
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        return bool(is_token_auth_enabled())
    except Exception:  # noqa: BLE001 - a Ray without token auth support
        return False


def _check_reachable(address: str) -> None:
    """Fail fast with a clear message instead of Ray's long retry loop on an unreachable head."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--ray-address {address!r} must look like HOST:PORT (e.g. 127.0.0.1:6379)")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as e:
        raise ClusterError(f"Ray head at {address} is unreachable ({e.strerror or e}); start it with "
                           f"`ray start --head --port {port}` or drop --ray-address to run locally") from None


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
