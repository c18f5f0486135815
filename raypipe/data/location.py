"""An output folder on a local disk or in an object store, one interface for both.

    out = Location("s3://bucket/relabeled")      # or "relabeled", "/abs/path", "file:///abs/path", "gs://…"
    out.write_text("_summary.json", text)         # whole objects only: a reader never sees half a file
    out.write_parquet("part-00000.parquet", table)
    out.names("part-*.parquet")                   # sorted names in the folder matching a glob
    out.child("_progress").read_parquet(name, columns=["video_id"])

Jobs that take `--out` write through this instead of `pathlib`, which turns `s3://b/x` into `s3:/b/x` (a local
folder named `s3:`). Object stores are reached through pyarrow's filesystems (`s3://` reads the usual
`AWS_ENDPOINT_URL` / `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_REGION` variables; any fsspec protocol
pyarrow lacks is wrapped). A write is atomic on both: a local file goes to a temporary name in the same folder
and is renamed; an object store publishes an object only when its upload completes. What cannot be reached (no
bucket, no credentials, a denied key) raises `LocationError` with one line naming the URI and the cause.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import posixpath
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from raypipe.video.source import is_local, local_path, resolve_filesystem


class LocationError(OSError):
    """An output location that cannot be used: one line with the URI and what went wrong."""


def output_location(uri: str, key: str = "out") -> Location:
    """A job's output folder, made (or its bucket checked) before any Ray work; a location that cannot be used
    is a `ConfigError` naming the key, so the command exits 2 with one line."""
    from raypipe.config import ConfigError

    try:
        return Location(uri).mkdir()
    except LocationError as e:
        raise ConfigError(f"{key}: {e}") from None


def local_output(uri: str, why: str) -> None:
    """ConfigError for an object-store OUT of a job whose outputs only work on a local folder (`why`)."""
    from raypipe.config import ConfigError

    if not is_local(str(uri)):
        raise ConfigError(f"out: {uri} is an object-store URI; this job writes a local folder ({why})")


class Location:
    def __init__(self, uri: str, _fs=None, _root: str | None = None):
        import pyarrow.fs as pafs

        uri = str(uri)
        if not uri.strip():
            raise LocationError("no output location given")
        self.uri = uri.rstrip("/") if not is_local(uri) else uri
        self.local = is_local(uri)
        if _fs is not None:
            self.fs, self.root = _fs, _root
        elif self.local:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(local_path(uri))
        else:
            try:
                self.fs, root = resolve_filesystem(self.uri)
            except Exception as e:  # noqa: BLE001 - unknown scheme, bad URI: one line
                raise LocationError(f"{uri}: {one_line(e)}") from None
            self.root = root.rstrip("/")

    # --- naming ---
    def child(self, name: str) -> Location:
        sub = self.path(name)
        return Location(self.uri_of(name), _fs=self.fs, _root=sub)

    def path(self, name: str) -> str:
        """The path of `name` inside the filesystem (a local absolute path, or `bucket/key`)."""
        return os.path.join(self.root, name) if self.local else posixpath.join(self.root, name)

    def uri_of(self, name: str) -> str:
        return self.path(name) if self.local else f"{self.uri}/{name}"

    def __str__(self) -> str:
        return self.root if self.local else self.uri

    # --- reading ---
    def exists(self, name: str = "") -> bool:
        import pyarrow.fs as pafs

        target = self.path(name) if name else self.root
        return self.call(lambda: self.fs.get_file_info(target).type != pafs.FileType.NotFound, name)

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names of the files directly in this folder that match the glob `pattern` (none: [])."""
        import pyarrow.fs as pafs

        def listing():
            selector = pafs.FileSelector(self.root, allow_not_found=True, recursive=False)
            return [i for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File]

        return sorted(n for n in (i.base_name for i in self.call(listing)) if fnmatch.fnmatchcase(n, pattern))

    def read_text(self, name: str) -> str:
        def read():
            with self.fs.open_input_stream(self.path(name)) as f:
                return f.read().decode("utf-8")

        return self.call(read, name)

    def read_parquet(self, name: str, columns: list[str] | None = None) -> pa.Table:
        return self.call(lambda: pq.read_table(self.path(name), columns=columns, filesystem=self.fs), name)

    def parquet_rows(self, name: str) -> int:
        return self.call(lambda: pq.read_metadata(self.path(name), filesystem=self.fs).num_rows, name)

    # --- writing ---
    def mkdir(self) -> Location:
        """Make the folder (and its parents) where folders exist; on an object store, check the bucket is there."""
        if self.local:
            os.makedirs(self.root, exist_ok=True)
        else:
            self._check_bucket()
        return self

    def write_text(self, name: str, text: str) -> str:
        return self.write_bytes(name, text.encode("utf-8"))

    def write_bytes(self, name: str, data: bytes) -> str:
        return self._write(name, lambda path: self._put(path, data))

    def parquet_writer(self, name: str, schema: pa.Schema) -> pq.ParquetWriter:
        """A streaming writer straight to `name` (for outputs too large to hold; an object store publishes the
        object when the writer is closed)."""
        return self.call(lambda: pq.ParquetWriter(self.path(name), schema, filesystem=self.fs), name)

    def write_parquet(self, name: str, table: pa.Table) -> str:
        return self._write(name, lambda path: pq.write_table(table, path, filesystem=self.fs))

    def delete(self, name: str) -> None:
        self.call(lambda: self.fs.delete_file(self.path(name)), name)

    # --- internals ---
    def _put(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def _write(self, name: str, write) -> str:
        final = self.path(name)
        if not self.local:  # an object appears only once its upload completes
            self.call(lambda: write(final), name)
            return self.uri_of(name)
        tmp = self.path(f".tmp-{uuid.uuid4().hex[:8]}-{name}")
        try:
            self.call(lambda: write(tmp), name)
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return final

    def _check_bucket(self) -> None:
        import pyarrow.fs as pafs

        bucket = self.root.split("/", 1)[0]
        info = self.call(lambda: self.fs.get_file_info(bucket))
        if info.type == pafs.FileType.NotFound:
            raise LocationError(f"{self.uri}: bucket {bucket!r} does not exist (create it first)")

    def call(self, fn, name: str = ""):
        """fn(), with a store's or a full disk's OSError turned into a one-line LocationError naming the URI."""
        try:
            return fn()
        except FileNotFoundError:
            raise
        except OSError as e:
            where = self.uri_of(name) if name else self.uri
            if self.local and getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
                raise LocationError(f"{where}: no space left on the device (what was written before is kept)") from None
            if self.local:
                raise
            raise LocationError(f"{where}: {one_line(e)}") from None


_FULL_TEXTS = ("No space left on device", "Disk quota exceeded")


def full_disk(error: BaseException, where: str) -> LocationError | None:
    """A one-line LocationError when `error` (or anything in its chain, or a remote worker's error text, as Ray
    Train reports it) is a full disk or an exceeded quota; else None."""
    seen = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(t in str(e) for t in _FULL_TEXTS):
            return LocationError(
                f"{where}: no space left on the device (what was written before is kept: free space and rerun the "
                f"same command to resume)"
            )
        e = e.__cause__ or e.__context__
    return None


_DENIED = ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "EXPIRED_TOKEN", "AccessDenied")
CREDENTIALS_HINT = (
    "the store refused the credentials: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and that "
    "the key may read and write this bucket"
)


def one_line(error: BaseException) -> str:
    """The first line of an error's message, without the request ids object stores append; a refused credential
    says so in words."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = text.split(" (Request ID")[0]
    if any(token in text for token in _DENIED):
        text = f"{text} ({CREDENTIALS_HINT})"
    return text


class StagedOutput:
    """The output folder of a job that writes with plain files (training: checkpoints, models, curves), wherever
    OUT is. A local OUT is used as it is. For an object-store OUT the job writes into a local staging folder
    (`$RAYPIPE_STAGING`, default ~/.cache/raypipe/staging/<hash of OUT>), Ray Train keeps its checkpoints in
    `OUT/ray_results` on the store itself (`storage`: so a rerun anywhere resumes from there), and `publish()`
    copies the staging folder up to OUT when the job is done.

        stage = StagedOutput(cfg.out)        # before any Ray work: an unusable OUT is a ConfigError here
        out = stage.dir                      # a local Path in every case
        fit_trainer(..., out, ..., storage=stage.storage)
        stage.publish()                      # no-op for a local OUT
    """

    def __init__(self, uri: str):
        import hashlib
        from pathlib import Path

        self.location = output_location(uri)
        if self.location.local:
            self.dir, self.storage = Path(self.location.root), None
        else:
            root = Path(os.environ.get("RAYPIPE_STAGING") or Path.home() / ".cache" / "raypipe" / "staging")
            self.dir = root / hashlib.sha1(self.location.uri.encode()).hexdigest()[:16]
            self.dir.mkdir(parents=True, exist_ok=True)
            self.storage = self.location.uri_of("ray_results")

    def uri_of(self, name: str) -> str:
        return str(self.dir / name) if self.storage is None else self.location.uri_of(name)

    def publish(self) -> str:
        """Copy everything in the staging folder to OUT (an object store); returns OUT."""
        import pyarrow.fs as pafs

        if self.storage is not None:
            self.location.call(
                lambda: pafs.copy_files(
                    str(self.dir),
                    self.location.root,
                    source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=self.location.fs,
                )
            )
        return str(self.location)
