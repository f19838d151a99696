"""The fork server's id-map answers: one box's failure never ends the server."""

from __future__ import annotations

import socket

import pytest

from sandboxd.jail import forkserver, protocol, userns


@pytest.fixture
def server(tmp_path):
    ours, _theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server = forkserver.ForkServer(ours, str(tmp_path))
    yield server
    ours.close()
    _theirs.close()


IDS = userns.SlotIds(keeper=60_000, program=60_001)


def _pending(server, pid: int = 4242) -> socket.socket:
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.usermaps.append((parent_end, pid, IDS))
    return child_end


def test_a_box_that_asks_and_dies_before_the_answer_does_not_end_the_server(server,
                                                                             monkeypatch):
    written = []
    monkeypatch.setattr(userns, "write_id_maps", lambda pid, ids: written.append((pid, ids)))
    box = _pending(server)
    box.send(protocol.USERMAP_PLS)
    box.close()  # killed: the ACK meets a closed socket (EPIPE)
    fd = server.usermaps[0][0].fileno()
    server.answer_usermap(fd)
    assert written == [(4242, IDS)] and server.usermaps == []


def test_maps_that_cannot_be_written_mean_no_ack(server, monkeypatch):
    def refuse(pid, ids):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(userns, "write_id_maps", refuse)
    box = _pending(server)
    box.send(protocol.USERMAP_PLS)
    server.answer_usermap(server.usermaps[0][0].fileno())
    assert box.recv(1) == b""  # EOF instead of the ACK: the box reports its usermap step
    box.close()


def test_each_box_gets_its_own_answer_in_any_order(server, monkeypatch):
    written = []
    monkeypatch.setattr(userns, "write_id_maps", lambda pid, ids: written.append(pid))
    first, second = _pending(server, 1), _pending(server, 2)
    second.send(protocol.USERMAP_PLS)
    server.answer_usermap(server.usermaps[1][0].fileno())
    assert second.recv(1) == protocol.USERMAP_ACK and written == [2]
    first.send(protocol.USERMAP_PLS)
    server.answer_usermap(server.usermaps[0][0].fileno())
    assert first.recv(1) == protocol.USERMAP_ACK and written == [2, 1]
    first.close()
    second.close()
