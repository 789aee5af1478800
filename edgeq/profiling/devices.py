"""Device strings for on-device profiling, and the errors a device can cause.

``parse_device("ssh://user@board:22")`` → ``SshDevice``; ``parse_device("adb:SERIAL?app=...")``
→ ``AdbDevice``. The string is user input: every part is checked before anything runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from edgeq.errors import EdgeqError, did_you_mean

SSH_OPTS_ENV = "EDGEQ_SSH_OPTS"
ANDROID_RUNNER_ENV = "EDGEQ_ANDROID_RUNNER"
ANDROID_DIR = "/data/local/tmp/edgeq"


class DeviceError(EdgeqError):
    """The device for on-device profiling cannot be used (the base of the errors below)."""


class DeviceUnreachableError(DeviceError):
    """No connection: host unknown, refused, timed out; Android device absent or offline."""


class DeviceAuthError(DeviceError):
    """Connected, but not let in: ssh key refused, host key unknown, adb unauthorized."""


class DeviceSetupError(DeviceError):
    """Something needed is missing: ssh/adb here, Python or the runtime on the device, a runner."""


class DeviceRunError(DeviceError):
    """The runner started on the device and failed; ``output_tail`` keeps its last lines."""

    def __init__(self, message: str, hint: str = "", output_tail: str = "") -> None:
        super().__init__(message, hint)
        self.output_tail = output_tail


# --- device strings ---------------------------------------------------------------------


@dataclass(frozen=True)
class SshDevice:
    url: str
    host: str
    user: str | None = None
    port: int | None = None
    python: str = "python3"

    @property
    def base_url(self) -> str:
        user = f"{self.user}@" if self.user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{user}{host}" + (f":{self.port}" if self.port else "")


@dataclass(frozen=True)
class AdbDevice:
    """``app`` set: benchmark through that app's ``BenchmarkActivity`` (android-demo), not a runner binary."""

    url: str
    serial: str | None = None
    app: str | None = None
    bundle: str | None = None


ANDROID_APP = "dev.edgeq.demo"  # android-demo's applicationId
_PACKAGE = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+")
_BUNDLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # as edgeq.bundle.describe.check_bundle_id


_NETLOC = re.compile(r"(?:(?P<user>[^@/\s]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.%-]+)(?::(?P<port>\d{1,5}))?")


def parse_device(device: str) -> SshDevice | AdbDevice:
    """``ssh://[user@]host[:port][?python=PATH]`` or ``adb:[SERIAL][?app=PKG][&bundle=ID]`` → a device."""
    text = device.strip()
    if text in ("adb", "adb:") or text.startswith("adb:"):
        return _parse_adb(device, text)
    if not text.startswith("ssh://"):
        raise DeviceError(f"unknown device '{device}'",
                          "use ssh://[user@]host[:port] for a Linux board, or adb:SERIAL for Android "
                          "(adb: alone picks the only attached device)")
    parts = urlsplit(text)
    found = _NETLOC.fullmatch(parts.netloc)
    if not found or found.group("host").startswith("-") or parts.path not in ("", "/") or parts.fragment:
        raise DeviceError(f"cannot read ssh device '{device}'",
                          "write it as ssh://[user@]host[:port][?python=/path/to/python3]")
    port = int(found.group("port")) if found.group("port") else None
    if port is not None and not 0 < port < 65536:
        raise DeviceError(f"port {port} in '{device}' is out of range", "use a port from 1 to 65535")
    query = parse_qs(parts.query, keep_blank_values=True)
    for key in query:
        if key != "python":
            raise DeviceError(f"unknown parameter '{key}' in '{device}'{did_you_mean(key, ['python'])}",
                              "the only parameter is ?python=/path/to/python3")
    python = query.get("python", ["python3"])[-1].strip()
    if not python:
        raise DeviceError(f"empty python= in '{device}'", "give the board's interpreter, e.g. ?python=/usr/bin/python3")
    return SshDevice(url=text, host=found.group("host").strip("[]"), user=found.group("user"), port=port, python=python)


def _parse_adb(device: str, text: str) -> AdbDevice:
    serial, mark, query_text = text[4:].partition("?")
    if serial and not re.fullmatch(r"[A-Za-z0-9._:\-\[\]]+", serial):
        raise DeviceError(f"'{device}' is not a valid adb serial",
                          "use adb:SERIAL as listed by 'adb devices', or adb: for the only device")
    query = parse_qs(query_text, keep_blank_values=True) if mark else {}
    for key in query:
        if key not in ("app", "bundle"):
            raise DeviceError(f"unknown parameter '{key}' in '{device}'{did_you_mean(key, ['app', 'bundle'])}",
                              f"the parameters are ?app={ANDROID_APP}&bundle=BUNDLE_ID")
    app = query["app"][-1].strip() if "app" in query else None
    bundle = query["bundle"][-1].strip() if "bundle" in query else None
    if app is not None and not _PACKAGE.fullmatch(app):
        raise DeviceError(f"app= in '{device}' is not an Android package name",
                          f"give the app's applicationId, e.g. ?app={ANDROID_APP}")
    if bundle is not None and (not _BUNDLE_ID.fullmatch(bundle) or ".." in bundle):
        raise DeviceError(f"bundle= in '{device}' is not a bundle id",
                          "give the id 'edgeq bundle' used: 1-64 letters, digits, '.', '_' or '-'")
    if bundle is not None and app is None:
        app = ANDROID_APP  # a bundle only exists inside an app
    return AdbDevice(url=text, serial=serial or None, app=app, bundle=bundle)


