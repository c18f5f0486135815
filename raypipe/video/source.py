"""Video URIs: local paths, `file://`, and any pyarrow/fsspec filesystem (`s3://`, `gs://`, `memory://`, …).

Local files are handed to decoders by path (no copy); remote objects are read into memory once.
"""

from __future__ import annotations

import os
import stat
from urllib.parse import urlparse

HEAD_BYTES = 512


class SourceError(OSError):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def is_local(uri: str) -> bool:
    scheme = urlparse(uri).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def local_path(uri: str) -> str:
    return urlparse(uri).path if uri.startswith("file://") else uri


def resolve_filesystem(uri: str):
    """(pyarrow FileSystem, path inside it) for a URI; fsspec protocols pyarrow lacks are wrapped."""
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception:  # noqa: BLE001 - pyarrow raises ArrowInvalid for schemes it does not know
        pass
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join_uri(root: str, relative: str) -> str:
    """`relative` resolved against a folder URI; absolute paths and full URIs are returned unchanged."""
    if urlparse(relative).scheme or os.path.isabs(relative):
        return relative
    if is_local(root):
        return os.path.normpath(os.path.join(local_path(root), relative))
    return root.rstrip("/") + "/" + relative


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device")):
        if test(mode):
            return name
    return "a block device" if stat.S_ISBLK(mode) else "not a plain file"


def open_source(uri: str, filesystem=None) -> tuple[str | bytes, bytes]:
    """(a local path or the object's bytes, its first bytes). Raises SourceError(kind) on failure."""
    if not isinstance(uri, str) or not uri.strip():
        raise SourceError("missing", f"no video path given ({uri!r})")
    if filesystem is None and is_local(uri):
        path = local_path(uri)
        try:
            st = os.stat(path)
            size = st.st_size
            if stat.S_ISDIR(st.st_mode):
                raise SourceError("not_a_video", f"{path} is a directory")
            if not stat.S_ISREG(st.st_mode):  # opening a FIFO blocks until a writer comes; a device never ends
                raise SourceError("not_a_video", f"{path} is not a regular file ({_file_kind(st.st_mode)})")
            with open(path, "rb") as f:
                head = f.read(HEAD_BYTES)
        except FileNotFoundError:
            raise SourceError("missing", f"no such file: {path}") from None
        except SourceError:
            raise
        except OSError as e:
            raise SourceError("io_error", f"cannot read {path}: {e}") from None
        if size == 0:
            raise SourceError("empty", f"{path} is empty (0 bytes)")
        return path, head
    try:
        fs, path = (filesystem, uri) if filesystem is not None else resolve_filesystem(uri)
        import pyarrow.fs as pafs

        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise SourceError("missing", f"no such object: {uri}")
        if info.type == pafs.FileType.Directory:
            raise SourceError("not_a_video", f"{uri} is a directory")
        with fs.open_input_stream(path) as f:
            data = f.read()
    except SourceError:
        raise
    except Exception as e:  # noqa: BLE001 - filesystems raise many types; all are I/O failures here
        raise SourceError("io_error", f"cannot read {uri}: {e}") from None
    if not data:
        raise SourceError("empty", f"{uri} is empty (0 bytes)")
    return bytes(data), bytes(data[:HEAD_BYTES])
