"""The sd_notify protocol, spoken directly (no libsystemd): READY, STATUS, STOPPING, WATCHDOG."""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("loadmgrd.systemd")
_warned = False


def notify(message: str) -> bool:
    """Send ``message`` to ``$NOTIFY_SOCKET`` if set; returns whether it was sent. A socket that
    cannot be reached is logged once; the daemon runs on regardless."""
    global _warned
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError as exc:
        if not _warned:
            log.warning("cannot notify systemd at NOTIFY_SOCKET=%s: %s", os.environ.get("NOTIFY_SOCKET"), exc)
            _warned = True
        return False
    return True


def reloading() -> bool:
    """``RELOADING=1`` with the monotonic timestamp newer systemd versions expect."""
    return notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), if systemd asks for them."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2_000_000, 0.05)
    except ValueError:
        return None


SD_LISTEN_FDS_START = 3


def listen_socket() -> socket.socket | None:
    """The listening socket passed by systemd socket activation (``LISTEN_FDS``), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not inherited by job steps
    if count < 1:
        return None
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    os.set_inheritable(sock.fileno(), False)
    sock.setblocking(False)
    return sock
