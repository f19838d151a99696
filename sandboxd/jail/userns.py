"""Parent side of the user namespace: the fork server writes the box's id maps.

Only a process outside the new user namespace with CAP_SETUID/CAP_SETGID there
may map arbitrary ids, so the box asks (USERMAP_PLS) and waits (USERMAP_ACK).
A box slot owns two host ids, never host root, never shared by two boxes at once:

    inside      host            who
    0           keeper id       D and I: owner of the user namespace (stage.py)
    1000        program id      the program and everything it starts

Two ids, so the program shares no credentials with the processes that supervise it
inside and around the box: it cannot signal, prlimit or renice them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .spec import BOX_UID

KEEPER_INSIDE = 0


@dataclass(frozen=True)
class SlotIds:
    keeper: int
    program: int

    @staticmethod
    def for_slot(uid_base: int, slot: int) -> SlotIds:
        return SlotIds(keeper=uid_base + 2 * slot, program=uid_base + 2 * slot + 1)


def id_map(ids: SlotIds) -> str:
    return f"{KEEPER_INSIDE} {ids.keeper} 1\n{BOX_UID} {ids.program} 1\n"


def write_id_maps(pid: int, ids: SlotIds) -> None:
    # setgroups is denied: the box may never drop a group whose absence grants access
    # ("negative" group ACLs); D dropped its supplementary groups while still root.
    with open(f"/proc/{pid}/setgroups", "w") as f:
        f.write("deny")
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(id_map(ids))
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(id_map(ids))
