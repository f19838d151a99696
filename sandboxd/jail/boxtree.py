"""A box's working directory copied out by the daemon, and copied into a fresh one.

The compiled-artifact cache (sandboxd/artifacts.py) keeps what a compile step left in
/box, so an identical program need not be compiled again. Reading what a box wrote is
what workspace.py otherwise never does, so `capture` is only ever called on a sealed
tree: the compile box has ended and `Sandbox.run` returned only once its cgroup was
empty, and no other box has had that workspace yet (the run step binds /box writable,
and its program may change anything there). Even so the walk trusts nothing in it:

- every step goes through a directory fd, each name opened with O_NOFOLLOW relative to
  its parent's fd, and the opened fd's fstat decides what it is;
- only regular files and directories are copied: a symlink, fifo, socket or device
  makes the tree uncapturable (None, never an error: the program simply is not cached);
- the total bytes, the entries and the depth are bounded before anything is read (a
  sparse file's st_size is checked against the budget, and reads stop past it);
- setuid, setgid and sticky bits are dropped; ownership is not kept.

`restore` writes the copy into a workspace's box/ before any box has seen it, as
`Workspace.write_file` does (O_CREAT|O_EXCL|O_NOFOLLOW, owned by that slot's host
uid), so the working directory stays writable to the new box and nothing the earlier
boxes did to their own copy (delete, chmod, replace a binary by a symlink) matters.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .workspace import Workspace

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a fifo planted in place of a file must not wait for a writer.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
MAX_DEPTH = 32  # directories deeper than this make the tree uncapturable
_KEPT_MODE_BITS = 0o777  # rwx for user, group, other; never setuid, setgid, sticky


class Uncapturable(Exception):
    """The tree holds something other than files and directories, or too much."""


@dataclass(frozen=True)
class Entry:
    path: str  # relative to /box, "/"-separated, parents listed before their children
    mode: int  # permission bits only
    content: bytes | None  # None: a directory


@dataclass(frozen=True)
class BoxTree:
    entries: tuple[Entry, ...]

    @property
    def size(self) -> int:
        """Bytes held: file contents plus names."""
        return sum(len(e.path) + (len(e.content) if e.content is not None else 0)
                   for e in self.entries)

    def restore(self, workspace: Workspace) -> None:
        """Write the tree into `workspace`'s box/, which no box may have seen yet."""
        box = workspace.path / "box"
        for entry in self.entries:
            path = box / entry.path
            if entry.content is None:
                os.mkdir(path, 0o700)
                os.chown(path, workspace.host_id, workspace.host_id, follow_symlinks=False)
                os.chmod(path, entry.mode, follow_symlinks=False)
                continue
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            try:
                os.fchown(fd, workspace.host_id, workspace.host_id)
                os.fchmod(fd, entry.mode)  # open's mode is masked by the umask
                view = memoryview(entry.content)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)


def capture(box: Path, *, max_bytes: int, max_entries: int) -> BoxTree:
    """A copy of the sealed tree at `box` (see the module docstring); raises
    Uncapturable when it cannot be copied whole within the bounds."""
    entries: list[Entry] = []
    budget = _Budget(max_bytes, max_entries)
    try:
        root = os.open(box, _DIR_FLAGS)
        try:
            _walk(root, "", 0, entries, budget)
        finally:
            os.close(root)
    except OSError as e:  # e.g. a name that cannot be opened: not cached, not a failure
        raise Uncapturable(f"{box}: {e}") from None
    return BoxTree(tuple(entries))


@dataclass
class _Budget:
    bytes: int
    entries: int

    def take_entry(self, path: str) -> None:
        self.entries -= 1
        if self.entries < 0:
            raise Uncapturable(f"{path}: too many files")


def _walk(dir_fd: int, prefix: str, depth: int, entries: list[Entry],
          budget: _Budget) -> None:
    for name in sorted(os.listdir(dir_fd)):
        path = prefix + name
        budget.take_entry(path)
        # A first look without following anything; the opened fd is checked again below,
        # so a name swapped between the two looks is caught either way.
        kind = stat.S_IFMT(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        if kind == stat.S_IFDIR:
            if depth + 1 >= MAX_DEPTH:
                raise Uncapturable(f"{path}: nested too deep")
            fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                info = os.fstat(fd)
                if not stat.S_ISDIR(info.st_mode):
                    raise Uncapturable(f"{path}: changed while read")
                entries.append(Entry(path, info.st_mode & _KEPT_MODE_BITS, None))
                _walk(fd, path + "/", depth + 1, entries, budget)
            finally:
                os.close(fd)
        elif kind == stat.S_IFREG:
            entries.append(Entry(path, *_read_file(dir_fd, name, path, budget)))
        else:
            raise Uncapturable(f"{path}: not a regular file or directory")


def _read_file(dir_fd: int, name: str, path: str, budget: _Budget) -> tuple[int, bytes]:
    fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)  # ELOOP if a symlink after all
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Uncapturable(f"{path}: not a regular file")
        if info.st_size > budget.bytes:
            raise Uncapturable(f"{path}: too large")
        chunks = []
        left = budget.bytes + 1  # one byte past the budget proves it too large
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        content = b"".join(chunks)
        if len(content) > budget.bytes:
            raise Uncapturable(f"{path}: too large")
        budget.bytes -= len(content) + len(path)
        return info.st_mode & _KEPT_MODE_BITS, content
    finally:
        os.close(fd)
