"""Where things live when the configuration does not say. Standard library only.

Shared by the daemon and the control client, so both agree on the default socket
without the client importing anything heavy.
"""

from __future__ import annotations

import configparser
import os
from pathlib import Path

CONFIG_FILE_NAME = "loadmgr_config.cfg"
SYSTEM_CONFIG_DIR = Path("/etc/loadmgr")


def state_dir() -> Path:
    """Per-user state directory; systemd's StateDirectory= wins when set."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "loadmgr"


def runtime_dir() -> Path:
    """Directory for the socket; systemd's RuntimeDirectory= wins, else the state directory."""
    if os.environ.get("RUNTIME_DIRECTORY"):
        return Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0])
    return state_dir()


def default_database() -> Path:
    return state_dir() / "loadmgr.db"


def default_socket() -> Path:
    return runtime_dir() / "loadmgrd.sock"


def default_log_location() -> Path:
    if os.environ.get("LOGS_DIRECTORY"):
        return Path(os.environ["LOGS_DIRECTORY"].split(":")[0])
    return state_dir() / "logs"


def find_config_file(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file to read: ``--config``, then ``$LOADMGR_CONFIG/loadmgr_config.cfg``, then
    ``/etc/loadmgr/loadmgr_config.cfg``. ``None`` means "built-in defaults".

    An explicit path (or an explicit LOADMGR_CONFIG) that does not exist is returned anyway so
    the caller can say so; only the system-wide fallback is optional.
    """
    if explicit:
        return Path(explicit)
    env_dir = os.environ.get("LOADMGR_CONFIG")
    if env_dir:
        candidate = Path(env_dir) / CONFIG_FILE_NAME
        # A directory without a config file is a first run with defaults, per the spec.
        return candidate if candidate.exists() else None
    system = SYSTEM_CONFIG_DIR / CONFIG_FILE_NAME
    return system if system.exists() else None


def resolve(base: Path | None, value: str) -> Path:
    """Expand ``~``/``$VARS`` and make a relative path relative to the config file's directory."""
    path = Path(os.path.expandvars(os.path.expanduser(value)))
    if not path.is_absolute() and base is not None:
        path = base.parent / path
    return path


def socket_from_config(config_file: Path | None) -> Path:
    """The ``[daemon] socket`` of a config file, read cheaply (the client's path to the socket)."""
    if config_file is None or not config_file.exists():
        return default_socket()
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(config_file, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError, OSError):
        return default_socket()
    value = parser.get("daemon", "socket", fallback="").strip()
    return resolve(config_file, value) if value else default_socket()
