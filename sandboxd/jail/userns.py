"""Parent side of the user namespace: the fork server writes the box's id maps.

Only a process outside the new user namespace with CAP_SETUID/CAP_SETGID there
may map arbitrary ids, so the box asks (USERMAP_PLS) and waits (USERMAP_ACK).
The box's single uid/gid (spec.BOX_UID inside) maps to a host id unique to its
slot: never host root, never shared by two boxes running at once.
"""

from __future__ import annotations

from .spec import BOX_UID


def write_id_maps(pid: int, host_id: int) -> None:
    # setgroups must be denied before an unprivileged gid_map is honoured, and it keeps
    # the box from dropping a group whose absence grants access ("negative" group ACLs).
    with open(f"/proc/{pid}/setgroups", "w") as f:
        f.write("deny")
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(f"{BOX_UID} {host_id} 1\n")
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(f"{BOX_UID} {host_id} 1\n")
