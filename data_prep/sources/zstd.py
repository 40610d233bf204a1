"""Reading .zst files as a stream that reports damage the way gzip does."""

from __future__ import annotations

import io


class ZstdReader(io.RawIOBase):
    """A .zst file decompressed frame after frame, 16 kB of it at a time.

    zstandard's own stream reader ends quietly when a file stops inside a frame; this one raises
    EOFError there (and OSError for corrupt data, after handing over what came before), so a
    damaged .zst is counted like a damaged .gz.
    """

    CHUNK = 1 << 14

    def __init__(self, path: str):
        import zstandard  # optional: resolve_files checks for it before any .zst is read

        self._new_frame = zstandard.ZstdDecompressor().decompressobj
        self._zstd_error = zstandard.ZstdError
        self._frame = self._new_frame()
        self._in_frame = False  # some bytes of the current frame were read, its end not yet
        self._out = memoryview(b"")
        self._error: OSError | None = None  # raised once the output before it has been read
        self._file = open(path, "rb")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out:
            if self._error is not None:
                raise self._error
            data = self._file.read(self.CHUNK)
            if not data:
                if self._in_frame:
                    raise EOFError("the .zst file ends inside a frame")
                return 0
            self._out = memoryview(self._decompress(data))
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _decompress(self, data: bytes) -> bytes:
        out = []
        while data:
            try:
                out.append(self._frame.decompress(data))
            except self._zstd_error as e:
                self._error = OSError(f"corrupt zstd data: {e}")
                break
            self._in_frame = not self._frame.eof
            data = b""
            if self._frame.eof:  # the next frame may start in the same chunk
                data, self._frame = self._frame.unused_data, self._new_frame()
        return b"".join(out)

    def close(self) -> None:
        self._file.close()
        super().close()
