"""Streamed .tar.gz archives: bytes are handed out block by block as they are compressed,
so memory stays flat whatever the sizes. Used for local folders and object-store prefixes."""

from __future__ import annotations

import tarfile


class Spool:
    """A write-only file object whose bytes are handed out as they accumulate."""

    def __init__(self):
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


ARCHIVE_BLOCK = 1024 * 1024


def add_in_blocks(archive: tarfile.TarFile, member: tarfile.TarInfo, handle, spool: Spool):
    """tarfile.addfile, but yielding the compressed bytes after every block it reads."""
    header = member.tobuf(archive.format, archive.encoding, archive.errors)
    archive.fileobj.write(header)
    archive.offset += len(header)
    left = member.size
    while left > 0:
        block = handle.read(min(ARCHIVE_BLOCK, left))
        if not block:
            block = b"\0" * min(ARCHIVE_BLOCK, left)  # the file shrank: pad to the size
        archive.fileobj.write(block)
        left -= len(block)
        yield spool.take()
    blocks, remainder = divmod(member.size, tarfile.BLOCKSIZE)
    if remainder:
        archive.fileobj.write(tarfile.NUL * (tarfile.BLOCKSIZE - remainder))
        blocks += 1
    archive.offset += blocks * tarfile.BLOCKSIZE
    yield spool.take()
