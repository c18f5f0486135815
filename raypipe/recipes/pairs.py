"""`raypipe pairs`: push a manifest through the Ray Data pair pipeline and account for every row.

    raypipe pairs --config configs/pairs_tiny.yaml --out pairs-out data.manifest=pairs.parquet

Writes to OUT (a folder, or an object-store prefix such as s3://bucket/pairs): `decoded.parquet` (per decoded
pair: manifest columns + sampling metadata, no frames), `errors.parquet` (error rows with their kind and message),
`summary.json` and the resolved `config.yaml`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter

import pyarrow as pa

from raypipe.config import ConfigError, DataConfig, config_yaml
from raypipe.data.location import Location, output_location
from raypipe.data.manifest import Manifest, label_counts, load_manifest
from raypipe.data.tables import metadata_columns, split_errors
from raypipe.distributed.cluster import configure_data_context, init_ray
from raypipe.distributed.decode import pair_dataset


@dataclasses.dataclass
class PairsJobConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    dims: list[str] = dataclasses.field(default_factory=lambda: ["VQ", "MQ", "TA"])  # label columns to read
    out: str = "pairs-out"  # output folder, or an object-store prefix (s3://bucket/pairs)
    address: str | None = None  # Ray cluster address; None: RAY_ADDRESS or a local Ray
    progress: bool = True  # progress bars


class _ParquetSink:
    """Streams record batches to one Parquet file; an empty output still gets a file with the schema."""

    def __init__(self, out: Location, name: str):
        self.out, self.name, self.writer, self.rows = out, name, None, 0

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            self.writer = self.out.parquet_writer(self.name, table.schema)
        self.writer.write_table(table.cast(self.writer.schema))
        self.rows += table.num_rows

    def close(self, schema: pa.Schema | None) -> None:
        if self.writer is None and schema is not None:
            self.out.write_parquet(self.name, schema.empty_table())
        elif self.writer is not None:
            self.writer.close()


def run_pairs(manifest: Manifest, cfg: PairsJobConfig) -> dict:
    """Decode every pair of `manifest` on the connected Ray; returns (and writes) the summary."""
    out = output_location(cfg.out)
    out.write_text("config.yaml", config_yaml(cfg))
    ds = pair_dataset(manifest, cfg.data)
    ok_sink, err_sink = _ParquetSink(out, "decoded.parquet"), _ParquetSink(out, "errors.parquet")
    kinds: Counter = Counter()
    frames_decoded = 0
    schema = None
    start = time.perf_counter()
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        good, bad = split_errors(batch)
        for side in ("A", "B"):
            frames_decoded += sum(len(ix) for ix in good.column(f"indices_{side}").to_pylist())
        meta_good, meta_bad = metadata_columns(good), metadata_columns(bad)
        schema = meta_good.schema
        if meta_good.num_rows:
            ok_sink.write(meta_good)
        if meta_bad.num_rows:
            err_sink.write(meta_bad)
            kinds.update(bad.column("error").to_pylist())
    wall = time.perf_counter() - start
    ok_sink.close(schema)
    err_sink.close(schema)
    summary = {
        "manifest": manifest.source,
        "rows": len(manifest),
        "decoded": ok_sink.rows,
        "errors": dict(sorted(kinds.items())),
        "error_rows": err_sink.rows,
        "frames_decoded": frames_decoded,
        "wall_s": round(wall, 3),
        "pairs_per_s": round(len(manifest) / wall, 3) if wall > 0 else None,
        "labels": label_counts(manifest),
        "masked_labels": manifest.masked,
        "outputs": {"decoded": out.uri_of("decoded.parquet"), "errors": out.uri_of("errors.parquet")},
    }
    if summary["decoded"] + summary["error_rows"] != summary["rows"]:
        raise RuntimeError(f"row accounting failed: {summary}")  # never expected; never silent
    out.write_text("summary.json", json.dumps(summary, indent=2))
    return summary


def run(cfg: PairsJobConfig) -> dict:
    if not cfg.data.manifest:
        raise ConfigError("data.manifest is required (a .parquet or .csv preference manifest)")
    manifest = load_manifest(cfg.data.manifest, cfg.dims, cfg.data.video_root)  # before Ray
    output_location(cfg.out)  # an unusable out fails here too
    init_ray(cfg.address)
    configure_data_context(cfg.progress)
    summary = run_pairs(manifest, cfg)
    print(json.dumps(summary, indent=2))
    return summary
