"""The latent cache on Ray: videos VAE-encoded and prompts text-encoded once, so epochs and ablations stream
latents.

    ds = latent_dataset(rows, family_path, clip, {"uri_w": "w", "uri_l": "l"})   # lazy Ray Dataset
    ds.write_parquet(cache_dir)                                                    # what train-flow reads back

Pipeline: Ray Data CPU tasks decode fixed-shape clips -> a pool of actors holding the frozen VAE and text encoder
(`LatentEncoder`) -> rows with `latents<suffix>` (float32 [C, T', H', W']; `latents_w`/`latents_l` for pairs) and
`text` ([L, D]) tensors; every other column passes through. Rows whose video failed keep their `error` kind and
zero latents (the training loop skips and counts them), so the cache has one row per training row. Image-to-video:
the first frames of one clip key (`image_from`) are the conditioning images, packed into `text`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raypipe.data.tables import clips_of, suffix, tensor_of
from raypipe.distributed.arrow import tensor_column
from raypipe.distributed.decode import decode_clips_block, decode_stage


class LatentEncoder:
    """Callable class for `map_batches(batch_format="pyarrow")`: frames_<key> -> latents_<key>, prompt -> text."""

    def __init__(self, family_path: str, keys: list[str], dtype: str = "float32", device: str = "cpu"):
        from raypipe.flow.families import load_family

        self.gen = load_family(family_path, dtype=dtype, device=device)
        self.keys = list(keys)

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok = (
            np.array([e is None for e in batch.column("error").to_pylist()])
            if "error" in batch.column_names
            else np.ones(batch.num_rows, bool)
        )
        frames_count = None
        for key in self.keys:
            sfx = suffix(key)
            frames = clips_of(batch, f"frames{sfx}")
            frames_count = frames.shape[1]
            z = np.zeros((batch.num_rows, *self.gen.latent_shape(*frames.shape[1:4])), np.float32)
            if ok.any():
                z[ok] = self.gen.encode_videos(frames[ok]).cpu().numpy()
            batch = batch.drop_columns([f"frames{sfx}"]).append_column(f"latents{sfx}", tensor_column(z))
        prompts = batch.column("prompt").to_pylist()
        if "image" in batch.column_names:  # image-to-video: the conditioning image is packed into the prompt
            from raypipe.flow.conditioning import encode_with_images

            text = encode_with_images(self.gen, prompts, tensor_of(batch, "image"), frames_count)
            batch = batch.drop_columns(["image"])
        else:
            text = self.gen.encode_prompts(prompts)
        return batch.append_column("text", tensor_column(text.float().cpu().numpy()))


def latent_dataset(
    rows: pa.Table,
    family_path: str,
    clip,
    keys: dict[str, str],
    image_from: str | None = None,
    concurrency: int = 1,
    batch_size: int = 8,
    rows_per_block: int = 8,
    num_gpus: float = 0.0,
    actor_cpus: float = 0.5,
):
    """Lazy Ray Dataset of encoded rows (`keys` maps a uri column to its latent key, e.g. {"uri": ""};
    `image_from`: the key whose first frames condition an image-to-video generator, packed into `text`)."""
    import ray.data

    frames_cols = {uri: f"frames{suffix(key)}" for uri, key in keys.items()}
    image = None if image_from is None else f"frames{suffix(image_from)}"
    decoded = decode_stage(
        rows,
        decode_clips_block,
        {"clip": clip, "columns": frames_cols, "image_from": image},
        rows_per_block,
        num_cpus=0.75,
        max_retries=3,
    )
    return decoded.map_batches(
        LatentEncoder,
        fn_constructor_kwargs={
            "family_path": family_path,
            "keys": list(keys.values()),
            "device": "cuda" if num_gpus else "cpu",
        },
        compute=ray.data.ActorPoolStrategy(size=max(1, concurrency)),
        batch_size=batch_size,
        num_cpus=actor_cpus,
        num_gpus=num_gpus or None,
        batch_format="pyarrow",
    )


def cached_latents(
    rows: pa.Table, family_path: str, clip, keys: dict[str, str], path, stamp_key: dict, image_from: str | None = None
):
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
            raise ConfigError(
                f"latent cache {path} was built for {stamp.read_text()}, not {stamp_key}: use another folder"
            )
        print(f"latent cache: reading {path}", flush=True)
    else:
        if path.exists():  # an interrupted build: start over
            shutil.rmtree(path)
        t0 = time.perf_counter()
        latent_dataset(rows, family_path, clip, keys, image_from).write_parquet(str(path))
        stamp.write_text(json.dumps(stamp_key))
        print(f"latent cache: {rows.num_rows} rows encoded into {path} in {time.perf_counter() - t0:.1f} s", flush=True)
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
