"""Sandbox.run with the caller's own descriptors for the program's stdin and stdout:
two boxes at once, their pipes crossed by the caller (the daemon relays nothing)."""

from __future__ import annotations

import asyncio
import fcntl
import os

import pytest

from sandboxd.jail.spec import Termination
from tests.integration.test_jail_protocol import spec_for


def _identity(fd: int) -> tuple[int, int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino, os.get_blocking(fd) << 1 | (fcntl.fcntl(fd, fcntl.F_GETFL) & 3)


async def test_two_boxes_talk_over_crossed_pipes(sandbox, registry):
    # A asks, B answers: A's stdout is B's stdin and B's stdout is A's stdin.
    a_to_b_r, a_to_b_w = os.pipe2(os.O_CLOEXEC)
    b_to_a_r, b_to_a_w = os.pipe2(os.O_CLOEXEC)
    passed = {fd: _identity(fd) for fd in (a_to_b_r, a_to_b_w, b_to_a_r, b_to_a_w)}
    async with sandbox.slot() as slot:
        asking = spec_for(sandbox, registry, ["/bin/sh", "-c",
                                              'echo 20; read answer; echo "got $answer" >&2'],
                          slot=slot, cwd="/")
        answering = spec_for(sandbox, registry, ["/bin/sh", "-c",
                                                 'read n; echo $((n + 1)); echo done >&2'],
                             slot=slot, cwd="/")
        a, b = await asyncio.gather(
            sandbox.run(asking, stdin_fd=b_to_a_r, stdout_fd=a_to_b_w),
            sandbox.run(answering, stdin_fd=a_to_b_r, stdout_fd=b_to_a_w))
    assert (a.termination, a.exit_code) == (Termination.EXITED, 0), a
    assert (b.termination, b.exit_code) == (Termination.EXITED, 0), b
    # stdout went to the other box, not to the daemon; stderr is still captured.
    assert a.stdout == b"" and b.stdout == b""
    assert a.stderr == b"got 21\n" and b.stderr == b"done\n"
    # Closed by the runs (the number may be in use again, e.g. by a warm box being built:
    # then it is another file).
    assert all(_identity(fd) != before for fd, before in passed.items())


async def test_a_passed_stdout_has_no_output_cap_and_its_reader_ending_ends_the_writer(
        sandbox, registry):
    # 4 MiB through a box whose output cap is 1 MiB: the cap is for captured output.
    r, w = os.pipe2(os.O_CLOEXEC)
    async with sandbox.slot() as slot:
        writer = spec_for(sandbox, registry,
                          ["/bin/sh", "-c", "head -c 4194304 /dev/zero; exec yes"],
                          slot=slot, cwd="/")
        reader = spec_for(sandbox, registry, ["/bin/sh", "-c",
                                              "head -c 4194304 | wc -c"], slot=slot, cwd="/")
        wrote, read = await asyncio.gather(sandbox.run(writer, stdout_fd=w),
                                           sandbox.run(reader, stdin_fd=r))
    assert read.stdout.strip() == b"4194304", read
    # The reader is gone: the endless writer dies of SIGPIPE, it does not hang.
    assert not wrote.output_exceeded
    assert (wrote.termination, wrote.signal) == (Termination.SIGNALED, 13), wrote


async def test_passed_fds_are_closed_even_when_the_run_cannot_start(sandbox, registry):
    r, w = os.pipe2(os.O_CLOEXEC)
    passed = {fd: _identity(fd) for fd in (r, w)}
    spec = spec_for(sandbox, registry, ["/bin/true"], merge_stderr=True)
    with pytest.raises(ValueError):
        await sandbox.run(spec, stdin_fd=r, stdout_fd=w)
    assert all(_identity(fd) != before for fd, before in passed.items())
