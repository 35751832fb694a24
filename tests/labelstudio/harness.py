"""Start a real Label Studio (its own venv, SQLite, a temp data dir) and a real `evo serve` as subprocesses."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("EVO_LABELSTUDIO_VENV", ROOT / ".venv-labelstudio"))
USER, PASSWORD, TOKEN = "evo@example.com", "evo-test-password", "evo-labelstudio-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout: float, headers: dict | None = None) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not up after {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LabelStudio:
    """`label-studio start` on 127.0.0.1 with a known user and legacy token (enabled for its organization)."""

    def __init__(self, workdir: Path) -> None:
        self.port, self.workdir = free_port(), workdir
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "labelstudio.log"

    def __enter__(self) -> LabelStudio:
        data = self.workdir / "ls-data"
        if (VENV / "template" / "label_studio.sqlite3").is_file():  # migrated once by setup.sh
            shutil.copytree(VENV / "template", data)
        env = {**os.environ, "ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false",
               "HOST": self.url, "LABEL_STUDIO_BASE_DATA_DIR": str(data), "LATEST_VERSION_CHECK": "false",
               "COLLECT_ANALYTICS": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}
        env.pop("PYTHONPATH", None)
        cmd = [str(VENV / "bin" / "label-studio"), "start", "--no-browser", "--port", str(self.port),
               "--internal-host", "127.0.0.1", "--data-dir", str(data), "--username", USER, "--password", PASSWORD,
               "--user-token", TOKEN, "--enable-legacy-api-token", "--log-level", "WARNING"]
        self.proc = subprocess.Popen(cmd, env=env, cwd=self.workdir, stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT)
        try:
            _wait(f"{self.url}/health", self.proc, self.log, timeout=600)
        except BaseException:
            _stop(self.proc)
            raise
        self.api = httpx.Client(base_url=self.url, headers={"Authorization": f"Token {TOKEN}"}, timeout=120)
        return self

    def __exit__(self, *exc) -> None:
        self.api.close()
        _stop(self.proc)


class EvoServe:
    """`python -m evo.cli serve RUN --port P --token T` in this interpreter (the project's venv)."""

    def __init__(self, run_dir: Path, workdir: Path, token: str) -> None:
        self.port, self.run_dir, self.token = free_port(), run_dir, token
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "evo-serve.log"

    def __enter__(self) -> EvoServe:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "evo.cli", "serve", str(self.run_dir), "--port",
                                      str(self.port), "--token", self.token], env=env, cwd=ROOT,
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        try:
            _wait(f"{self.url}/health", self.proc, self.log, timeout=180,
                  headers={"Authorization": f"Bearer {self.token}"})
        except BaseException:
            _stop(self.proc)
            raise
        self.api = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=120)
        return self

    def stop(self) -> None:
        self.api.close()
        _stop(self.proc)

    def __exit__(self, *exc) -> None:
        self.stop()
