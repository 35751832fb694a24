"""The growth search on more than one machine: a real two-node Ray cluster and a real PostgreSQL study store."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from test_search import TINY

from evo.errors import ConfigError
from evo.runs import Run

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _write_space(d: Path) -> Path:
    p = d / "space.yaml"
    p.write_text(yaml.safe_dump(TINY))
    return p


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_AUTH_MODE"] = "token"  # the head turns token auth on; joining nodes and drivers must say so too
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ---- two Ray nodes on this machine ---------------------------------------------------------------


def _pids_under(marker: str) -> list[int]:
    """Processes whose command line names our private temp dir (ours only: never `ray stop`, which kills all)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            pids.append(int(d))
    return pids


def _kill_tree(marker: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _pids_under(marker)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
            time.sleep(0.1)
        if not pids:
            return


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _node_ports(taken: set[int]) -> list[str]:
    """Every port a node binds by default, made private so two nodes (and other tests' clusters) coexist.
    The worker port range holds none of the ports in `taken` (Ray refuses a port used twice), and the
    ports this node uses join `taken`."""
    p = _free_ports(6)
    taken.update(p)
    rng = random.Random(p[0])
    while True:  # below Linux's ephemeral range (32768+), where _free_ports' ports come from
        low = rng.randrange(20000, 32700)
        if not taken & set(range(low, low + 51)):
            break
    taken.update(range(low, low + 51))
    return [f"--node-manager-port={p[0]}", f"--object-manager-port={p[1]}", f"--dashboard-agent-listen-port={p[2]}",
            f"--dashboard-agent-grpc-port={p[3]}", f"--metrics-export-port={p[4]}", f"--runtime-env-agent-port={p[5]}",
            f"--min-worker-port={low}", f"--max-worker-port={low + 50}"]


@pytest.fixture(scope="module")
def two_nodes():
    """A head (1 CPU) and a worker node (1 CPU) started with `ray start` under a private temp dir."""
    if not Path(RAY).exists():
        pytest.skip(f"no ray executable next to {sys.executable}")
    tmp = tempfile.mkdtemp(prefix="evo-ray-", dir="/tmp")  # short: Ray's unix sockets live under it
    port, dash, client = _free_ports(3)
    taken = {port, dash, client}
    env = _clean_env()
    common = ["--num-cpus=1", f"--temp-dir={tmp}", "--disable-usage-stats"]
    head = [RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", '--resources={"head_node": 1}',
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
            f"--ray-client-server-port={client}", *common, *_node_ports(taken)]
    worker = [RAY, "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
              '--resources={"worker_node": 1}', *common, *_node_ports(taken)]
    try:
        for cmd in (head, worker):
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}"}
    finally:
        _kill_tree(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


DRIVER = textwrap.dedent("""
    import json, sys, time
    from evo.search.launch import launch
    space, run_dir, address, dashboard = sys.argv[1:5]
    import ray
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")

    @ray.remote(num_cpus=1, resources={"head_node": 1})
    class Blocker:  # holds the head's only CPU for the whole search
        def ready(self):
            return ray.get_runtime_context().get_node_id()

    blocker = Blocker.remote()
    blocked = ray.get(blocker.ready.remote(), timeout=120)
    results = launch(space, run_dir=run_dir, ray_address=address, say=lambda s: print(s, flush=True))
    from ray.util.state import list_tasks
    nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    want = sum(len(r.trials) - sum(t["state"] not in ("COMPLETE", "FAIL") for t in r.trials) for r in results)
    tasks = {}
    for _ in range(30):  # task events reach the state API a moment after the task ends
        tasks = {t.name: t.node_id for t in list_tasks(address=dashboard, limit=10000, detail=True, timeout=30,
                                                       raise_on_missing_output=False)
                 if t.name and t.name[:3] in ("r0-", "r1-") and t.node_id and t.state == "FINISHED"}
        if len(tasks) >= want:
            break
        time.sleep(1)
    print("RESULT " + json.dumps({"tasks": tasks, "nodes": {k: sorted(v) for k, v in nodes.items()},
                                  "rounds": len(results), "blocked": blocked}), flush=True)
""")


def test_candidates_run_on_a_joined_worker_node(two_nodes, tmp_path):
    """launch joins a running head by address and its candidates run wherever the cluster has room: with
    the head's one CPU held by another job, every candidate runs on the worker node that joined it.
    (Not "concurrency 2 spreads over both nodes": the driver starts candidates as the budget admits
    them, and on a loaded machine one can finish before the next starts, so that was a race.)"""
    env = _clean_env()
    r = subprocess.run([sys.executable, "-c", DRIVER, str(_write_space(tmp_path)), str(tmp_path / "run"),
                        two_nodes["address"], two_nodes["dashboard"]],
                       env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, f"driver failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert "Ray: 2 node(s), 2 CPUs" in r.stdout
    out = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert out["rounds"] == 2
    assert Run.open(tmp_path / "run").versions() == [0, 1, 2]
    by_node = {}
    for name, node in out["tasks"].items():
        by_node.setdefault(node, []).append(name)
    kinds = {n: ("head_node" in res) * "head" + ("worker_node" in res) * "worker" for n, res in out["nodes"].items()}
    assert kinds[out["blocked"]] == "head"
    assert set(by_node) == {n for n, k in kinds.items() if k == "worker"}, (by_node, kinds)
    assert any(name.startswith("r0-t") for name in out["tasks"]) and any(name.startswith("r1-t") for name in out["tasks"])


# ---- PostgreSQL as the Optuna storage -------------------------------------------------------------


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


@pytest.fixture(scope="module")
def postgres():
    """A private PostgreSQL server on a free port (as user `postgres` when run as root); yields HOST:PORT."""
    bindir = _pg_bin()
    if bindir is None or not (bindir / "pg_ctl").exists():
        msg = "PostgreSQL server binaries (initdb, pg_ctl) not found; run .ci/setup or apt-get install postgresql"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    tmp = Path(tempfile.mkdtemp(prefix="evo-pg-", dir="/tmp"))  # pytest's tmp_path is 0700 root-only
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(tmp, "postgres", "postgres")
    tmp.chmod(0o755)
    data, port = tmp / "data", _free_ports(1)[0]

    def run(*cmd: str) -> None:
        r = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120, cwd=tmp)
        assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(tmp / "log"), "-w", "-t", "60", "-o",
            f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "evo")
        yield f"127.0.0.1:{port}"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


# The driver is named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which evo does not depend on.
def _url(hostport: str) -> str:
    return f"postgresql+psycopg2://postgres@{hostport}/evo"


@pytest.mark.postgres
def test_bare_postgresql_url_opens(postgres, tmp_path):
    """A plain postgresql:// URL works although SQLAlchemy >= 2.1 would pick psycopg 3 for it."""
    import optuna

    from evo.search.storage import open_storage

    storage = open_storage(f"postgresql://postgres@{postgres}/evo", tmp_path)
    assert isinstance(storage, optuna.storages.RDBStorage)


@pytest.mark.postgres
def test_launch_with_postgres_storage(postgres, tmp_path):
    import optuna
    import ray

    from evo.search.cluster import connect
    from evo.search.launch import launch

    url = _url(postgres)
    started = not ray.is_initialized()  # reuse tests/test_search.py's session cluster when it is up
    connect(num_cpus=2)
    try:
        results = launch(_write_space(tmp_path), run_dir=tmp_path / "run", storage=url, say=lambda s: None)
    finally:
        if started:
            ray.shutdown()
    assert len(results) == 2
    run = Run.open(tmp_path / "run")
    assert run.versions() == [0, 1, 2]
    assert run.config["storage"] == url
    assert not (run.path / "optuna.journal").exists()
    for i in range(2):
        study = optuna.load_study(study_name=f"round-{i}", storage=url)
        assert any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
        assert any(t.user_attrs.get("enqueued") for t in study.trials)


@pytest.mark.postgres
def test_unreachable_postgres_is_a_config_error(tmp_path):
    from evo.search.storage import open_storage

    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="cannot open Optuna storage.*Connection refused"):
        open_storage("postgresql+psycopg2://nobody@127.0.0.1:1/nothing", tmp_path)
    assert time.monotonic() - t0 < 10
