"""Who is on the other end of the socket, and may they change anything (SO_PEERCRED)."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int

    @classmethod
    def of(cls, sock: socket.socket) -> Peer:
        """The kernel's record of the connecting process; nothing the client says is used."""
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
        return cls(pid, uid, gid)

    @cached_property
    def groups(self) -> frozenset[int]:
        """The peer process's groups: from /proc while it lives, else from the group database."""
        gids = {self.gid}
        try:
            with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("Groups:"):
                        gids.update(int(g) for g in line.split()[1:])
                        return frozenset(gids)
        except (OSError, ValueError):
            pass
        try:
            user = pwd.getpwuid(self.uid).pw_name
            gids.update(g.gr_gid for g in grp.getgrall() if user in g.gr_mem)
        except KeyError:
            pass
        return frozenset(gids)

    @cached_property
    def user(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)


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
