"""Who is on the other end of the socket, and may they change anything (SO_PEERCRED)."""

from __future__ import annotations

import errno
import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass
from functools import cached_property

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux ≥ 4.13


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: frozenset[int]

    @classmethod
    def of(cls, sock: socket.socket) -> Peer:
        """The kernel's record of the connecting process, taken when it connected (SO_PEERCRED,
        SO_PEERGROUPS): nothing the client says, and nothing that happens later, is used."""
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
        return cls(pid, uid, gid, frozenset({gid, *_peer_groups(sock, pid)}))

    @cached_property
    def user(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)


def _peer_groups(sock: socket.socket, pid: int) -> list[int]:
    size = 4 * 64
    while size <= 4 * 65536:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
        except OSError as exc:
            if exc.errno == errno.ERANGE:
                size *= 4
                continue
            break
        return list(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    # Kernels without SO_PEERGROUPS: the process's groups, read now, while it is connected.
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return [int(g) for g in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return []


@dataclass(frozen=True)
class AccessPolicy:
    """Admin = root, the daemon's own user, or a member of ``admin_group``."""

    daemon_uid: int
    admin_group: str

    @classmethod
    def for_this_process(cls, admin_group: str) -> AccessPolicy:
        return cls(os.getuid(), admin_group)

    def admin_gid(self) -> int | None:
        if not self.admin_group:
            return None
        try:
            return grp.getgrnam(self.admin_group).gr_gid
        except KeyError:
            return None

    def is_admin(self, peer: Peer) -> bool:
        if peer.uid in (0, self.daemon_uid):
            return True
        gid = self.admin_gid()
        return gid is not None and gid in peer.groups

    def refusal(self, peer: Peer, method: str) -> str:
        group = f"members of group {self.admin_group!r}, " if self.admin_group else ""
        return (
            f"permission denied: {method} is an admin command; user {peer.user!r} (uid {peer.uid}) "
            f"lacks the admin permission (granted to root, {group}and the daemon's user)"
        )
