"""Optuna storage: a journal file in the run folder (embedded default) or an RDB URL (several machines)."""

from __future__ import annotations

from pathlib import Path

import optuna

from evo.errors import ConfigError


def open_storage(url: str | None, run_dir: Path) -> optuna.storages.BaseStorage:
    """`None` → `<run>/optuna.journal`; `postgresql://…`, `sqlite:///…`, `mysql://…` → RDBStorage."""
    if url is None or url == "journal":
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(str(run_dir / "optuna.journal")))
    scheme = url.split(":", 1)[0]
    if scheme.split("+")[0] not in ("postgresql", "sqlite", "mysql"):
        raise ConfigError(f"storage URL {url!r} is not supported; use postgresql://USER:PASS@HOST/DB "
                          "(several machines) or leave --storage unset for the journal file in the run folder")
    if url.startswith("postgresql://"):  # SQLAlchemy >= 2.1 maps this to psycopg 3; evo ships psycopg2
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except Exception as e:  # noqa: BLE001 - sqlalchemy/driver errors vary
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot open Optuna storage {_masked(url)!r}: {msg}") from None


def _masked(url: str) -> str:
    """The URL without its password, for messages."""
    head, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{head}{sep}{creds.split(':', 1)[0]}:***@{host}"
