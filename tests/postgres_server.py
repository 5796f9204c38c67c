"""A throwaway PostgreSQL server for the tests: `initdb` and `pg_ctl` from the distribution's
`postgresql` package, a cluster in a temporary folder listening on a free loopback port, stopped
and deleted at the end. PostgreSQL refuses to run as root: as root (CI), the server runs as the
`postgres` user the package creates, in a folder it owns.

Set up as docs/sweeps.md tells a user to: a role `sweeper` with a password, owning the
databases; connections over TCP need the password (scram-sha-256).
"""

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

USER, PASSWORD = "sweeper", "s3cret-for-tests"


def server_programs() -> Path | None:
    """The folder holding `initdb` and `pg_ctl`: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent  # a link, as Debian puts one, to the folder of the others
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return debian[-1].parent if debian else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server() -> Iterator[Callable[[str], str]]:
    """Starts a server; yields `new_database(name)`, which creates a database owned by `sweeper`
    and returns its URL (without a driver: `postgresql://...`)."""
    programs = server_programs()
    root = os.geteuid() == 0
    as_server_user = ["runuser", "-u", "postgres", "--"] if root else []
    folder = Path(tempfile.mkdtemp(prefix="vae-postgres-"))
    if root:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", free_port()

    def run(*command: str) -> None:
        done = subprocess.run([*as_server_user, *command], capture_output=True, text=True)
        if done.returncode:
            log = (folder / "server.log").read_text() if (folder / "server.log").exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}{log}")

    try:
        # the superuser `postgres`, without a password, only on the Unix socket in this 0700 folder
        run(str(programs / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
            "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8")  # fmt: skip
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off"
        run(str(programs / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-o", options, "-w", "start")
        try:
            # docs/sweeps.md's two commands, as the database's administrator
            admin = ["-h", str(folder), "-p", str(port), "-U", "postgres"]
            run(str(programs / "psql"), *admin, "-c", f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")

            def new_database(name: str) -> str:
                run(str(programs / "createdb"), *admin, "--owner", USER, name)
                return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/{name}"

            yield new_database
        finally:
            run(str(programs / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
