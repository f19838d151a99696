"""Child side: the box's network namespace gets its loopback link up, nothing else.

Some runtimes (the JVM, Node's inspector, MPI-style code) expect a working `lo`;
with no other interface and no route, nothing leaves the box.

One SIOCSIFFLAGS ioctl on a datagram socket of the new namespace, as `ip link set lo
up` does: the kernel then gives `lo` 127.0.0.1/8 and ::1 by itself. (A netlink client
library did the same in ~6 ms and, imported into the fork server, made every forked
box process 20 MB larger.)
"""

from __future__ import annotations

import fcntl
import socket
import struct

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = "16sh22x"  # struct ifreq: the name, then ifr_flags in the union (40 bytes)


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        request = struct.pack(_IFREQ, b"lo", 0)
        _, flags = struct.unpack(_IFREQ, fcntl.ioctl(sock, SIOCGIFFLAGS, request))
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | IFF_UP))
