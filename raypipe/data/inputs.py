"""What jobs read: `resolve_input` — relabel's input (a preference manifest, a pointwise manifest, or a folder /
glob of videos); `read_pair_table` — the pairs train-flow and train-latent-reward read (a manifest or relabel
output).

    inp = resolve_input("pairs.parquet", ["VQ", "MQ", "TA"])        # kind "pairs": uri_A, uri_B, prompt
    inp = resolve_input("videos/", dims)                             # kind "videos": path, prompt ("" or sidecar)
    inp = resolve_input("s3://bucket/gen/*.mp4", dims, prompts="prompts.csv")

`RelabelInput.table` keeps every input column and adds `row_id` (position in the input) and the resolved URI
columns (`uri_A`/`uri_B`, or `uri`). Folder and glob listings are sorted, so `row_id` is stable across restarts.
A folder is listed recursively for files with a video extension (others are counted in `notes`); a glob takes
every file it matches (a non-video match becomes an error row, never a silent skip). Prompts for listed videos
come from a sidecar `path,prompt` table (`prompts=`, else `prompts.csv` / `prompts.parquet` in the folder); a
sidecar path matches a video by full URI, by path relative to the folder, or by file name.
"""

from __future__ import annotations

import glob as globlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa

from raypipe.config import ConfigError
from raypipe.data.manifest import ManifestError, default_root, iter_manifest, load_manifest, read_table, table_columns
from raypipe.video.source import is_local, local_path, resolve_filesystem

VIDEO_EXTENSIONS = (
    ".mp4",
    ".mov",
    ".mkv",
    ".webm",
    ".avi",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".ts",
    ".flv",
    ".wmv",
    ".3gp",
    ".gif",
    ".webp",
)
MANIFEST_EXTENSIONS = (".parquet", ".csv")
SIDECAR_NAMES = ("prompts.csv", "prompts.parquet")
_GLOB_CHARS = set("*?[")


@dataclass
class RelabelInput:
    """Relabel's rows, walked a batch at a time (`batches()`: each call reads the input again, so a manifest larger
    than memory is never held whole); `table` concatenates them (small inputs and tests)."""

    read: Callable[[], Iterator[pa.Table]]  # a fresh walk over the validated rows, in row_id order
    kind: str  # "pairs" | "pointwise" | "videos" (folder or glob; scored like pointwise)
    source: str
    input_columns: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def sides(self) -> tuple[str, ...]:
        return ("A", "B") if self.kind == "pairs" else ("",)

    def uri_columns(self) -> list[str]:
        return ["uri_A", "uri_B"] if self.kind == "pairs" else ["uri"]

    def batches(self) -> Iterator[pa.Table]:
        return self.read()

    @property
    def table(self) -> pa.Table:
        return pa.concat_tables(list(self.batches()))


def _is_glob(source: str) -> bool:
    return any(c in _GLOB_CHARS for c in source)


def _join(root: str, name: str) -> str:
    return os.path.join(root, name) if is_local(root) else root.rstrip("/") + "/" + name


def list_folder(root: str) -> tuple[list[str], int]:
    """(sorted video URIs under a local or remote folder, recursively; count of other files skipped)."""
    import pyarrow.fs as pafs

    if is_local(root):
        base = local_path(root)
        found = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "_"))]
            found += [os.path.join(dirpath, f) for f in filenames if not f.startswith(".")]
    else:
        fs, path = resolve_filesystem(root)
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        scheme = root.split("://", 1)[0]
        found = [f"{scheme}://{i.path}" for i in infos if i.type == pafs.FileType.File]
    videos = sorted(f for f in found if f.lower().endswith(VIDEO_EXTENSIONS))
    return videos, len(found) - len(videos)


def list_glob(pattern: str) -> list[str]:
    """Sorted files a local or remote glob matches (folders excluded)."""
    if is_local(pattern):
        return sorted(p for p in globlib.glob(local_path(pattern), recursive=True) if os.path.isfile(p))
    import fsspec

    fs, _ = fsspec.core.url_to_fs(pattern)
    scheme = pattern.split("://", 1)[0]
    return sorted(
        f"{scheme}://{p.lstrip('/')}" if not p.startswith(f"{scheme}://") else p
        for p in fs.glob(pattern)
        if fs.isfile(p)
    )


def _exists(uri: str) -> bool:
    if is_local(uri):
        return os.path.exists(local_path(uri))
    import pyarrow.fs as pafs

    try:
        fs, path = resolve_filesystem(uri)
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except Exception:  # noqa: BLE001 - an unreachable store is "not there" for sidecar discovery
        return False


def read_sidecar(source: str) -> dict[str, str]:
    """`path,prompt` table -> {path as written: prompt}; ManifestError on a bad table."""
    table = read_table(source)
    for column in ("path", "prompt"):
        if column not in table.column_names:
            raise ManifestError(
                source, f"prompt sidecar needs columns path, prompt (have {table.column_names})", column
            )
    paths = [str(p) for p in table.column("path").to_pylist()]
    prompts = ["" if p is None else str(p) for p in table.column("prompt").to_pylist()]
    return dict(zip(paths, prompts))


def _match_prompts(uris: list[str], root: str | None, sidecar: dict[str, str]) -> tuple[list[str], int]:
    """Prompt per URI (by full URI, path relative to root, or file name); count of sidecar rows unused."""
    by_name: dict[str, str] = {}
    for key, prompt in sidecar.items():
        by_name.setdefault(os.path.basename(key), prompt)
    used: set[str] = set()
    out = []
    for uri in uris:
        keys = [uri]
        if root is not None:
            prefix = root.rstrip("/") + "/"
            if uri.startswith(prefix):
                keys.append(uri[len(prefix) :])
        hit = next((k for k in keys if k in sidecar), None)
        if hit is not None:
            used.add(hit)
            out.append(sidecar[hit])
        else:
            name = os.path.basename(uri)
            out.append(by_name.get(name, ""))
            if name in by_name:
                used.update(k for k in sidecar if os.path.basename(k) == name)
    return out, len(set(sidecar) - used)


def _videos_table(uris: list[str], root: str | None, prompts_source: str | None, notes: list[str]) -> pa.Table:
    sidecar_path = prompts_source
    if sidecar_path is None and root is not None:
        sidecar_path = next((p for p in (_join(root, n) for n in SIDECAR_NAMES) if _exists(p)), None)
    if sidecar_path is not None:
        prompts, unused = _match_prompts(uris, root, read_sidecar(sidecar_path))
        notes.append(
            f"prompts from {sidecar_path}: {sum(1 for p in prompts if p)} of {len(uris)} videos matched"
            + (f", {unused} sidecar rows matched no video" if unused else "")
        )
    else:
        prompts = [""] * len(uris)
        notes.append("no prompt sidecar: prompts are empty (context-aware dimensions such as TA see no text)")
    return pa.table(
        {
            "path": pa.array(uris, pa.string()),
            "prompt": pa.array(prompts, pa.string()),
            "row_id": pa.array(range(len(uris)), pa.int64()),
            "uri": pa.array(uris, pa.string()),
        }
    )


def resolve_input(
    source: str, dimensions=None, video_root: str | None = None, prompts: str | None = None, batch_rows: int = 65536
) -> RelabelInput:
    """INPUT (manifest, folder or glob) as rows to walk; the columns of a manifest and every listing are checked
    here (ManifestError / ConfigError before any Ray work), each row's values as its batch is read. Label columns
    are kept as written (relabel does not read them). `dimensions` is accepted for older callers and unused."""
    source = os.fspath(source)
    notes: list[str] = []
    if source.lower().endswith(MANIFEST_EXTENSIONS) and not _is_glob(source):
        kind, _ = iter_manifest(source, video_root, batch_rows)  # the columns are checked here

        def read() -> Iterator[pa.Table]:
            return iter_manifest(source, video_root, batch_rows)[1]

        input_columns = [c for c in table_columns(source) if not c.startswith("uri")]
        return RelabelInput(read, kind, source, input_columns, notes)
    if _is_glob(source):
        uris, root = list_glob(source), None
        if not uris:
            raise ConfigError(f"input glob {source!r} matches no file")
    else:
        if not _exists(source):
            raise ConfigError(
                f"input {source!r} does not exist (expected a manifest .parquet/.csv, a folder of videos, or a glob)"
            )
        is_dir = os.path.isdir(local_path(source)) if is_local(source) else True
        if is_dir:
            root = os.path.abspath(local_path(source)) if is_local(source) else source.rstrip("/")
            uris, skipped = list_folder(root)
            if skipped:
                notes.append(f"{skipped} files in {source} without a video extension were not listed")
            if not uris:
                raise ConfigError(f"folder {source!r} has no video files ({', '.join(VIDEO_EXTENSIONS)})")
        else:
            uris, root = [source], None
    table = _videos_table(uris, root, prompts, notes)
    return RelabelInput(
        lambda: (pa.Table.from_batches([b]) for b in table.to_batches(batch_rows)),
        "videos",
        source,
        ["path", "prompt"],
        notes,
    )


def read_pair_table(path: str, dims, video_root: str | None = None, relabelled: bool = False) -> pa.Table:
    """Preference pairs: a preference manifest (validated, labels as y_<DIM>, which may be missing) or `raypipe
    relabel` output (a folder, or a part file when `relabelled`: row_id, uri_A/uri_B, prompt and the margin_/
    score_/model_ columns, used as written)."""
    import pyarrow.parquet as pq

    if os.path.isdir(path) or relabelled:
        table = pq.read_table(path)
        missing = [c for c in ("row_id", "uri_A", "uri_B", "prompt") if c not in table.column_names]
        if missing:
            raise ConfigError(f"{path}: not relabel output of a preference manifest (missing {missing})")
        return table
    manifest = load_manifest(path, list(dims), video_root, require_labels=False)
    if manifest.kind != "pairs":
        raise ConfigError(f"expected a preference manifest or relabel output; {path} is pointwise")
    return manifest.table


def real_videos(manifest: str | None, count: int, folder, synth) -> pa.Table:
    """Real videos (`uri`, `prompt`) for a λ_sft / LiFT real term: a manifest with path and prompt columns, or else
    `count` clean SynthPref renders drawn with `synth` (a SynthConfig) in `folder` (made once; a rerun reuses them)."""
    from pathlib import Path

    from raypipe.video.source import join_uri

    if manifest:
        table, root = read_table(manifest), default_root(manifest)
    else:
        folder = Path(folder)
        if not (folder / "manifest.parquet").exists():
            from raypipe.video.synth_real import make_real_synthpref

            make_real_synthpref(folder, count, synth)
        table, root = read_table(str(folder / "manifest.parquet")), str(folder)
    missing = sorted({"path", "prompt"} - set(table.column_names))
    if missing:
        raise ConfigError(f"the real videos' manifest lacks columns {missing} (needs path, prompt)")
    empty = [
        i
        for i, (p, q) in enumerate(zip(table.column("path").to_pylist(), table.column("prompt").to_pylist()))
        if not p or q is None
    ]
    if empty:
        raise ConfigError(f"the real videos' manifest has rows without a path or a prompt: rows {empty[:10]}")
    uris = [join_uri(root, p) for p in table.column("path").to_pylist()]
    return pa.table({"uri": pa.array(uris, pa.string()), "prompt": table.column("prompt").cast(pa.string())})
