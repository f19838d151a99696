"""The fork server: a small single-threaded process that forks every box.

Why a separate process: forking the asyncio daemon would copy its large page
tables (slower) and any lock a uvloop/executor thread holds (unsafe). This
process is started with a fresh interpreter (`python -m sandboxd.jail.forkserver`)
before the daemon's event loop exists, imports only `sandboxd.jail` (and the
kernel-facing packages it uses), and never starts a thread, so fork() here is
both cheap and safe.

It serves one request at a time on a SOCK_SEQPACKET socket (see protocol.py):
SPAWN carries the box's shape (BoxShape: its rootfs, not its job) as JSON and
the box's report, take and cgroup descriptors as SCM_RIGHTS; the reply is the pid
of the box's first process, sent right after the fork. It never waits for a box:
a box's request for its id maps (userns.py) is one more descriptor in its poll
loop, answered when it comes, so any number of boxes go through their setup at once.
It reaps every box process it forked; results travel on each box's report
pipe straight to the supervisor, never through here.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import prctl

from . import mounts, protocol, stage, userns
from .spec import BoxShape


class ForkServer:
    def __init__(self, sock: socket.socket, root_dir: str) -> None:
        self.sock = sock
        self.root_dir = root_dir
        # Boxes forked and not yet given their id maps: (sync socket, D's pid, ids).
        self.usermaps: list[tuple[socket.socket, int, userns.SlotIds]] = []

    def serve(self) -> None:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        while True:
            for fd, _events in poller.poll():
                if fd == wake_r:
                    stage.drain(wake_r)
                    self.reap()
                elif fd == self.sock.fileno():
                    if not self.answer_spawn(poller):
                        return  # the daemon is gone
                else:
                    poller.unregister(fd)
                    self.answer_usermap(fd)

    def answer_spawn(self, poller: select.poll) -> bool:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(self.sock, protocol.MAX_MESSAGE,
                                                         protocol.SPAWN_FDS)
        except ConnectionResetError:
            return False  # the daemon closed its end with our last reply unread
        if not msg:
            return False
        try:
            reply = self.spawn(protocol.decode(msg), fds)
        except Exception as e:  # noqa: BLE001 - the daemon must get an answer
            reply = {"error": f"{type(e).__name__}: {e}"}
        finally:
            for fd in fds:
                os.close(fd)
        if "pid" in reply:
            poller.register(self.usermaps[-1][0].fileno(), select.POLLIN)
        self.sock.send(protocol.encode(reply))
        return True

    def answer_usermap(self, fd: int) -> None:
        """A box asked for its id maps (or died before it could: EOF)."""
        index = next(i for i, (sock, _, _) in enumerate(self.usermaps) if sock.fileno() == fd)
        sync, pid, ids = self.usermaps.pop(index)
        # Any OSError here is this one box's (killed meanwhile, say), never the server's.
        with sync, contextlib.suppress(OSError):
            if sync.recv(1) != protocol.USERMAP_PLS:
                return  # the box failed earlier and said why on its report pipe
            # On failure the box sees EOF instead of the ACK and reports its usermap step.
            userns.write_id_maps(pid, ids)
            sync.send(protocol.USERMAP_ACK)

    def reap(self) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def spawn(self, request: dict, fds: list[int]) -> dict:
        """Fork the box's D and answer at once: D's setup (cgroup join, unshare) runs
        on its own while this server forks other boxes; D's request for its id maps
        comes back on its sync socket, answered by `answer_usermap` when it arrives."""
        if len(fds) != protocol.SPAWN_FDS:
            raise ValueError(f"SPAWN needs {protocol.SPAWN_FDS} descriptors, got {len(fds)}")
        shape = BoxShape.from_wire(request["shape"])
        plan = mounts.plan(shape, self.root_dir)
        ids = userns.SlotIds(**request["ids"])
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        me = os.getpid()
        pid = os.fork()
        if pid == 0:
            parent_end.close()  # (other boxes' sync sockets: closed by D's stdio step)
            stage.run_box(shape, plan, request["procs_files"], fds, child_end.fileno(), me,
                          ids.keeper)
        child_end.close()
        self.usermaps.append((parent_end, pid, ids))
        return {"pid": pid}


class ForkServerProcess:
    """Daemon side: starts the fork server and owns its socket (blocking calls)."""

    def __init__(self, root_dir: str) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        package_parent = str(Path(__file__).resolve().parents[2])
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": package_parent}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sandboxd.jail.forkserver", str(theirs.fileno()), root_dir,
             str(os.getpid())],
            pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self.sock = ours

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        self.sock.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main() -> None:
    sock_fd, root_dir, daemon_pid = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    # Die with the daemon: a box must never outlive the service that accounts for it.
    # (This process never changes credentials, so the kernel never clears it.)
    prctl.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != daemon_pid:
        sys.exit("sandboxd-fork: the daemon exited before the fork server started")
    prctl.set_name("sandboxd-fork")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C goes to the daemon, which stops us
    sock = socket.socket(fileno=sock_fd)
    server = ForkServer(sock, root_dir)
    # Everything imported so far is never scanned by the collector again: a collection
    # in a forked box process then touches (and so copies) none of these pages.
    gc.freeze()
    server.serve()


if __name__ == "__main__":
    main()
