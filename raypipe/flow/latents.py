"""The latent cache: videos VAE-encoded and prompts text-encoded once, so epochs and ablations stream latents.

    ds = latent_dataset(rows, family_path, clip, {"uri_w": "w", "uri_l": "l"})   # lazy Ray Dataset
    ds.write_parquet(cache_dir)                                                    # what train-flow reads back

Pipeline: Ray Data CPU tasks decode fixed-shape clips -> a pool of actors holding the frozen VAE and text encoder
(`LatentEncoder`) -> rows with `latents<suffix>` (float32 [C, T', H', W']; `latents_w`/`latents_l` for pairs) and `text` ([L, D])
tensors; every other
column passes through. Rows whose video failed keep their `error` kind and zero latents (the training loop skips
and counts them), so the cache has one row per training row.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa


def suffix(key: str) -> str:
    """Column suffix of a clip key: "w" -> "_w" (frames_w, latents_w); "" -> "" (frames, latents)."""
    return f"_{key}" if key else ""


def tensor_of(batch: pa.Table, column: str) -> np.ndarray:
    """A fixed-shape tensor column of a pyarrow batch as one ndarray [n, ...]."""
    chunks = [c.to_numpy() for c in batch.column(column).chunks]
    return np.concatenate(chunks) if chunks else np.zeros((0,), np.float32)


def _tensor_column(values: np.ndarray) -> pa.Array:
    from ray.data.extensions import ArrowTensorArray

    return ArrowTensorArray.from_numpy(np.ascontiguousarray(values))


class LatentEncoder:
    """Callable class for `map_batches(batch_format="pyarrow")`: frames_<key> -> latents_<key>, prompt -> text."""

    def __init__(self, family_path: str, keys: list[str], dtype: str = "float32", device: str = "cpu"):
        from raypipe.flow.family import WanFamily

        self.gen = WanFamily.load(family_path, dtype=dtype, device=device)
        self.keys = list(keys)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from raypipe.train.flow_loop import clips_of

        ok = np.array([e is None for e in batch.column("error").to_pylist()]) if "error" in batch.column_names \
            else np.ones(batch.num_rows, bool)
        for key in self.keys:
            sfx = suffix(key)
            frames = clips_of(batch, f"frames{sfx}")
            z = np.zeros((batch.num_rows, *self._latent_shape(frames.shape)), np.float32)
            if ok.any():
                z[ok] = self.gen.encode_videos(frames[ok]).cpu().numpy()
            batch = batch.drop_columns([f"frames{sfx}"]).append_column(f"latents{sfx}", _tensor_column(z))
        text = self.gen.encode_prompts(batch.column("prompt").to_pylist()).float().cpu().numpy()
        return batch.append_column("text", _tensor_column(text))

    def _latent_shape(self, frames_shape) -> tuple[int, ...]:
        _, t, h, w, _ = frames_shape
        c = int(self.gen.pipeline.vae.config.z_dim)
        return (c, 1 + (t - 1) // self.gen.temporal, h // self.gen.spatial, w // self.gen.spatial)


def latent_dataset(rows: pa.Table, family_path: str, clip, keys: dict[str, str], concurrency: int = 1,
                   batch_size: int = 8, rows_per_block: int = 8, num_gpus: float = 0.0, actor_cpus: float = 0.5):
    """Lazy Ray Dataset of encoded rows (`keys` maps a uri column to its latent key, e.g. {"uri": ""})."""
    import ray.data

    from raypipe.train.flow_job import decode_clips_block

    blocks = [rows.slice(i, rows_per_block) for i in range(0, rows.num_rows, max(1, rows_per_block))]
    frames_cols = {uri: f"frames{suffix(key)}" for uri, key in keys.items()}
    decoded = ray.data.from_arrow(blocks).map_batches(
        decode_clips_block, fn_kwargs={"clip": clip, "columns": frames_cols}, batch_format="pyarrow",
        batch_size=None, zero_copy_batch=True, num_cpus=0.75, max_retries=3)  # max_retries: no fusion (see scoring)
    return decoded.map_batches(
        LatentEncoder, fn_constructor_kwargs={"family_path": family_path, "keys": list(keys.values()),
                                              "device": "cuda" if num_gpus else "cpu"},
        compute=ray.data.ActorPoolStrategy(size=max(1, concurrency)), batch_size=batch_size, num_cpus=actor_cpus,
        num_gpus=num_gpus or None, batch_format="pyarrow")


def cached_latents(rows: pa.Table, family_path: str, clip, keys: dict[str, str], path, stamp_key: dict):
    """The latent cache of `rows` as a Ray Dataset: read back when `path` was built for `stamp_key`, else encoded
    once (Ray Data decode tasks + encoder actors) and written there with the key stamped beside it. A folder
    built for another key is refused rather than silently reused."""
    import json
    import shutil
    import time
    from pathlib import Path

    from raypipe.config import ConfigError

    path = Path(path)
    stamp = path / "_cache.json"
    if stamp.exists():
        if json.loads(stamp.read_text()) != stamp_key:
            raise ConfigError(f"latent cache {path} was built for {stamp.read_text()}, not {stamp_key}: "
                              "use another folder")
        print(f"latent cache: reading {path}", flush=True)
    else:
        if path.exists():  # an interrupted build: start over
            shutil.rmtree(path)
        t0 = time.perf_counter()
        latent_dataset(rows, family_path, clip, keys).write_parquet(str(path))
        stamp.write_text(json.dumps(stamp_key))
        print(f"latent cache: {rows.num_rows} rows encoded into {path} in {time.perf_counter() - t0:.1f} s",
              flush=True)
    return read_cache(path)


def read_cache(path, materialize_below: int = 2 << 30):
    """The cached rows as a Ray Dataset. Caches smaller than `materialize_below` bytes are materialised once in
    the object store: otherwise every epoch re-lists and re-reads the files (on 2 CPUs that cost ~30 s per epoch,
    more than an epoch of tiny-generator steps)."""
    from pathlib import Path

    import ray.data

    size = sum(p.stat().st_size for p in Path(path).rglob("*.parquet"))
    ds = ray.data.read_parquet(str(path), file_extensions=["parquet"])
    return ds.materialize() if size < materialize_below else ds
