"""A real OpenSSH server on loopback, for the on-device (ssh://) profiling tests.

``LoopbackSshd`` generates a host key and a client key in a temporary directory,
writes an ``sshd_config`` that listens on 127.0.0.1 at a free port and accepts only
that client key for the current user, and runs ``/usr/sbin/sshd -D -e`` in the
foreground as a child process. ``ssh_options()`` are the client options that reach it
(given to edgeq through ``EDGEQ_SSH_OPTS``).
"""

from __future__ import annotations

import getpass
import os
import shlex
import socket
import subprocess
import time
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
                   check=True, capture_output=True)
    return path


class LoopbackSshd:
    """``with LoopbackSshd(tmp) as sshd: ... sshd.url(python=...)``."""

    free_port = staticmethod(_free_port)

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.user = getpass.getuser()
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log = self.root / "sshd.log"

    def __enter__(self) -> "LoopbackSshd":
        if not SSHD.exists():
            raise RuntimeError(f"{SSHD} not found: install openssh-server (apt-get install openssh-server) "
                               "to run the ssh profiling tests")
        self.root.mkdir(parents=True, exist_ok=True)
        host_key = _keygen(self.root / "host_ed25519")
        self.client_key = _keygen(self.root / "client_ed25519")
        self.other_key = _keygen(self.root / "unauthorized_ed25519")
        authorized = self.root / "authorized_keys"
        authorized.write_text((self.root / "client_ed25519.pub").read_text())
        authorized.chmod(0o600)
        if os.geteuid() == 0:  # root's sshd wants its privilege-separation directory
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        config = self.root / "sshd_config"
        for _attempt in range(5):
            self.port = _free_port()
            config.write_text("\n".join([
                f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
                f"AuthorizedKeysFile {authorized}", f"PidFile {self.root / 'sshd.pid'}",
                "StrictModes no", "UsePAM no", "PermitRootLogin prohibit-password",
                "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
                f"AllowUsers {self.user}", "PrintMotd no", "LogLevel VERBOSE", "MaxStartups 50",
            ]) + "\n")
            log = self.log.open("ab")
            self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            log.close()
            if self._wait_ready(timeout=15):
                return self
            self._stop()
            if "Address already in use" not in self.log.read_text(errors="replace"):
                break
        raise RuntimeError(f"sshd did not start on 127.0.0.1:{self.port}: "
                           f"{self.log.read_text(errors='replace').strip()[-800:]}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return True
            except OSError:
                time.sleep(0.1)
        return False

    def _stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def url(self, python: str | None = None) -> str:
        query = f"?python={python}" if python else ""
        return f"ssh://{self.user}@127.0.0.1:{self.port}{query}"

    def ssh_options(self, key: Path | None = None) -> str:
        """Client options (for ``EDGEQ_SSH_OPTS``): this server's key only, no user config,
        no known_hosts (its host key is new each run)."""
        return shlex.join([
            "-F", "/dev/null", "-i", str(key or self.client_key), "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR",
        ])
