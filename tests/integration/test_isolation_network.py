"""Isolation, network: a box has only its own loopback and AF_UNIX sockets (SPEC "Isolation").

Each test runs one hostile program that prints one `check:OK` / `check:FAIL detail`
line per attempt; the test asserts every line by name, so a failure names the promise
that broke. The seccomp allow-list answers socket() for any family but AF_UNIX with
EPERM (seccomp.py), so no packet can leave whatever the network namespace holds.
"""

from __future__ import annotations

import secrets
import socket

from tests.integration import hostile
from tests.integration.hostile import assert_checks

NET_INCLUDES = ("#include <arpa/inet.h>\n#include <netdb.h>\n#include <sys/socket.h>\n"
                "#include <sys/un.h>\n#include <stddef.h>\n")


def c_program(body: str) -> str:
    return hostile.c_program(body, NET_INCLUDES)





# -------------------------------------------------------------------------- host listener

INET_CONNECT = r"""
/* Try to reach `addr:port` over `family`/`type`. socket() must be refused (EPERM/EACCES);
 * should it ever be allowed, the connect (and a datagram) must still fail. */
static void try_reach(const char *name, int family, int type, const char *addr, int port) {
    char sock_check[96], reach_check[96];
    snprintf(sock_check, sizeof sock_check, "socket_%s", name);
    snprintf(reach_check, sizeof reach_check, "reach_%s", name);
    errno = 0;
    int s = socket(family, type, 0);
    expect_errno(sock_check, s, errno, EPERM, EACCES);
    if (s == -1) { ok(reach_check); return; }
    struct sockaddr_storage ss = {0};
    socklen_t len;
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET; a->sin_port = htons(port);
        inet_pton(AF_INET, addr, &a->sin_addr); len = sizeof *a;
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6; a->sin6_port = htons(port);
        inet_pton(AF_INET6, addr, &a->sin6_addr); len = sizeof *a;
    }
    int r = connect(s, (struct sockaddr *)&ss, len);
    if (r == 0 && type == SOCK_DGRAM) r = (int)send(s, "x", 1, 0);
    if (r == 0) fail(reach_check, "reached %s port %d", addr, port);
    else ok(reach_check);
    close(s);
}
"""


async def test_tcp_connect_to_host_listener_fails(execute):
    # A listener of the host's loopback: a box that shared the host's network
    # namespace (or could open AF_INET sockets) would reach it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        source = c_program(INET_CONNECT + r"""
int main(void) {
    int port;
    if (scanf("%d", &port) != 1) return 2;
    try_reach("tcp_127.0.0.1", AF_INET, SOCK_STREAM, "127.0.0.1", port);
    try_reach("tcp6_mapped_127.0.0.1", AF_INET6, SOCK_STREAM, "::ffff:127.0.0.1", port);
    try_reach("udp_127.0.0.1", AF_INET, SOCK_DGRAM, "127.0.0.1", port);
    return 0;
}
""")
        result = await execute("c", source, stdin=f"{port}\n")
        assert_checks(result, [
            "socket_tcp_127.0.0.1", "reach_tcp_127.0.0.1",
            "socket_tcp6_mapped_127.0.0.1", "reach_tcp6_mapped_127.0.0.1",
            "socket_udp_127.0.0.1", "reach_udp_127.0.0.1",
        ])
        try:
            conn, peer = listener.accept()
        except BlockingIOError:
            pass
        else:
            conn.close()
            raise AssertionError(f"the host listener on port {port} got a connection from {peer}")


async def test_connect_to_public_address_is_refused_at_socket(execute):
    # socket() itself must fail: then no packet can leave, whatever the routes are.
    source = c_program(INET_CONNECT + r"""
int main(void) {
    try_reach("udp_1.1.1.1", AF_INET, SOCK_DGRAM, "1.1.1.1", 53);
    try_reach("tcp_8.8.8.8", AF_INET, SOCK_STREAM, "8.8.8.8", 53);
    try_reach("udp6_2606.4700.4700..1111", AF_INET6, SOCK_DGRAM, "2606:4700:4700::1111", 53);
    try_reach("tcp6_2001.4860.4860..8888", AF_INET6, SOCK_STREAM, "2001:4860:4860::8888", 53);
    EXPECT_ERRNO("socket_raw_icmp", socket(AF_INET, SOCK_RAW, IPPROTO_ICMP), EPERM, EACCES);
    EXPECT_ERRNO("socket_af_packet", socket(AF_PACKET, SOCK_RAW, 0), EPERM, EACCES);
    return 0;
}
""")
    result = await execute("c", source)
    names = []
    for n in ("udp_1.1.1.1", "tcp_8.8.8.8", "udp6_2606.4700.4700..1111",
              "tcp6_2001.4860.4860..8888"):
        names += [f"socket_{n}", f"reach_{n}"]
    assert_checks(result, names + ["socket_raw_icmp", "socket_af_packet"])


async def test_dns_lookup_fails(execute):
    source = c_program(r"""
int main(void) {
    struct addrinfo *res = NULL;
    int rc = getaddrinfo("example.com", "80", NULL, &res);
    if (rc != 0) ok("getaddrinfo_example.com");
    else fail("getaddrinfo_example.com", "resolved example.com");
    rc = getaddrinfo("one.one.one.one", "53", NULL, &res);
    if (rc != 0) ok("getaddrinfo_one.one.one.one");
    else fail("getaddrinfo_one.one.one.one", "resolved one.one.one.one");
    EXPECT_ERRNO("no_resolv_conf", access("/etc/resolv.conf", F_OK), ENOENT, 0);
    /* The control: the synthesized /etc/hosts still answers for localhost. */
    rc = getaddrinfo("localhost", "80", NULL, &res);
    if (rc == 0) ok("getaddrinfo_localhost");
    else fail("getaddrinfo_localhost", "rc=%d %s", rc, gai_strerror(rc));
    return 0;
}
""")
    result = await execute("c", source)
    assert_checks(result, ["getaddrinfo_example.com", "getaddrinfo_one.one.one.one",
                           "no_resolv_conf",
                           "getaddrinfo_localhost"])


async def test_only_loopback_interface_is_visible(execute):
    # The box's network namespace has `lo` and nothing else: no route, no host socket.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        source = r"""
import os
def check(name, cond, detail):
    print(f"{name}:OK" if cond else f"{name}:FAIL {detail}", flush=True)

port = int(input())
lines = open("/proc/net/dev").read().splitlines()[2:]
names = sorted(line.split(":")[0].strip() for line in lines)
check("interfaces_only_lo", names == ["lo"], names)
routes = open("/proc/net/route").read().splitlines()[1:]
check("no_ipv4_routes", routes == [], routes)
tcp = [line.split()[1] for line in open("/proc/net/tcp").read().splitlines()[1:]]
check("host_listener_not_in_proc_net_tcp",
      not any(a.endswith(f":{port:04X}") for a in tcp), tcp)
check("no_sys_class_net", not os.path.exists("/sys/class/net"), os.listdir("/sys/class/net")
      if os.path.exists("/sys/class/net") else "")
"""
        result = await execute("python3", source, stdin=f"{port}\n")
    assert_checks(result, ["interfaces_only_lo", "no_ipv4_routes",
                           "host_listener_not_in_proc_net_tcp", "no_sys_class_net"])


async def test_netlink_vsock_and_other_families_refused(execute):
    source = c_program(r"""
#include <linux/netlink.h>
#include <linux/vm_sockets.h>
#ifndef AF_ALG
#define AF_ALG 38
#endif
#define TRY(name, fam, type, proto) EXPECT_ERRNO(name, socket(fam, type, proto), EPERM, EACCES)
int main(void) {
    TRY("netlink_route", AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
    TRY("netlink_audit", AF_NETLINK, SOCK_RAW, NETLINK_AUDIT);
    TRY("netlink_uevent", AF_NETLINK, SOCK_DGRAM, NETLINK_KOBJECT_UEVENT);
    TRY("vsock_stream", AF_VSOCK, SOCK_STREAM, 0);
    TRY("vsock_dgram", AF_VSOCK, SOCK_DGRAM, 0);
    TRY("alg", AF_ALG, SOCK_SEQPACKET, 0);
    TRY("inet6_stream", AF_INET6, SOCK_STREAM, 0);
    /* socketpair with another family is filtered too */
    int sv[2];
    EXPECT_ERRNO("socketpair_inet", socketpair(AF_INET, SOCK_STREAM, 0, sv), EPERM, EACCES);
    return 0;
}
""")
    result = await execute("c", source)
    assert_checks(result, ["netlink_route", "netlink_audit", "netlink_uevent", "vsock_stream",
                           "vsock_dgram", "alg", "inet6_stream", "socketpair_inet"])


async def test_unix_sockets_work(execute):
    # The control: the allow-list is "AF_UNIX only", not "no sockets".
    source = c_program(r"""
static int roundtrip(int a, int b) {
    char buf[8] = {0};
    return write(a, "ping", 4) == 4 && read(b, buf, sizeof buf) == 4 && !memcmp(buf, "ping", 4);
}
int main(void) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0 && roundtrip(sv[0], sv[1]))
        ok("socketpair_stream");
    else fail("socketpair_stream", "errno=%s", errname(errno));
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) == 0 && roundtrip(sv[1], sv[0]))
        ok("socketpair_dgram");
    else fail("socketpair_dgram", "errno=%s", errname(errno));
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strcpy(addr.sun_path, "/tmp/isolation.sock");
    int srv = socket(AF_UNIX, SOCK_STREAM, 0);
    if (srv < 0 || bind(srv, (struct sockaddr *)&addr, sizeof addr) || listen(srv, 1)) {
        fail("unix_listen_connect", "listen: errno=%s", errname(errno));
        return 0;
    }
    int cli = socket(AF_UNIX, SOCK_STREAM, 0);
    if (cli < 0 || connect(cli, (struct sockaddr *)&addr, sizeof addr)) {
        fail("unix_listen_connect", "connect: errno=%s", errname(errno));
        return 0;
    }
    int conn = accept(srv, NULL, NULL);
    if (conn >= 0 && roundtrip(cli, conn)) ok("unix_listen_connect");
    else fail("unix_listen_connect", "accept/roundtrip: errno=%s", errname(errno));
    return 0;
}
""")
    result = await execute("c", source)
    assert_checks(result, ["socketpair_stream", "socketpair_dgram", "unix_listen_connect"])


async def test_host_abstract_unix_socket_unreachable(execute):
    # Abstract AF_UNIX names belong to a network namespace: AF_UNIX is allowed, so this
    # is the one socket path left towards the host, and the netns must close it.
    name = f"sandboxd-isolation-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind("\0" + name)
        listener.listen(1)
        listener.setblocking(False)
        source = c_program(r"""
int main(void) {
    char name[108] = {0};
    if (scanf("%100s", name) != 1) return 2;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    memcpy(addr.sun_path + 1, name, strlen(name));
    socklen_t len = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s < 0) { fail("abstract_socket", "socket: errno=%s", errname(errno)); return 0; }
    EXPECT_ERRNO("abstract_socket", connect(s, (struct sockaddr *)&addr, len), ECONNREFUSED, 0);
    return 0;
}
""")
        result = await execute("c", source, stdin=name + "\n")
        assert_checks(result, ["abstract_socket"])
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            pass
        else:
            conn.close()
            raise AssertionError("the host's abstract unix socket got a connection from the box")


async def test_loopback_is_up_with_its_addresses(execute):
    # `lo` is brought up in the box (runtimes expect it): the kernel then gives it
    # 127.0.0.1 (a host route in the local table) and ::1 where IPv6 is enabled.
    source = r"""
def check(name, cond, detail):
    print(f"{name}:OK" if cond else f"{name}:FAIL {detail}", flush=True)

trie = open("/proc/net/fib_trie").read()
check("lo_has_127_0_0_1", "|-- 127.0.0.1\n" in trie and "/8 host LOCAL" in trie, trie)
try:
    inet6 = open("/proc/net/if_inet6").read().split()
except FileNotFoundError:  # IPv6 disabled on this host: nothing to check
    inet6 = ["00000000000000000000000000000001", "lo"]
check("lo_has_ipv6_loopback", "00000000000000000000000000000001" in inet6, inet6)
"""
    result = await execute("python3", source)
    assert_checks(result, ["lo_has_127_0_0_1", "lo_has_ipv6_loopback"])
