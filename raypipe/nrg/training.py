"""The latent reward of Flow-NRG, without Ray: pair labels, the held-out split, one training step's loss (both
latents noised with ONE eps and ONE t), and accuracy per t bucket (SPEC §6.1)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from raypipe.config import ConfigError
from raypipe.data.manifest import normalize_label
from raypipe.data.tables import tensor_of

NOISE = ("uniform", "clean")
BUCKETS = (0.0, 0.25, 0.5, 0.75, 1.0)


# --- labels and rows -------------------------------------------------------------------------------------------
def pair_labels(table: pa.Table, dims: list[str], source: str = "auto") -> tuple[pa.Table, str]:
    """Rows (row_id, uri_A, uri_B, prompt, error, y_<DIM> int8 with nulls) from a manifest or relabel output.
    `source` auto: the relabel model's labels (`model_<DIM>`) where present, else the manifest's y_<DIM>."""
    have_model = all(f"model_{d}" in table.column_names for d in dims)
    have_y = all(f"y_{d}" in table.column_names for d in dims)
    if source == "auto":
        source = "model" if have_model else "manifest"
    if source == "model" and not have_model:
        raise ConfigError(f"data.labels=model needs relabel output with model_<DIM> for {dims}")
    if source == "manifest" and not have_y:
        raise ConfigError(f"data.labels=manifest needs a preference manifest with labels for {dims}")
    cols = {
        "row_id": table.column("row_id"),
        "uri_A": table.column("uri_A"),
        "uri_B": table.column("uri_B"),
        "prompt": table.column("prompt"),
    }
    for d in dims:
        if source == "model":
            values = table.column(f"model_{d}").to_pylist()
            y = [normalize_label(v) for v in values]
            cols[f"y_{d}"] = pa.array(y, pa.int8())
        else:
            cols[f"y_{d}"] = table.column(f"y_{d}").cast(pa.int8())
    rows = pa.table(cols)
    if "error" in table.column_names:  # relabel error rows: their videos are unreadable
        rows = rows.append_column("input_error", table.column("error"))
    return rows, source


def split_rows(rows: pa.Table, val_fraction: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """Deterministic split by row_id (a seeded permutation), so reruns and resumes see the same pairs."""
    n = rows.num_rows
    n_val = int(round(val_fraction * n)) if val_fraction > 0 else 0
    order = np.random.default_rng(seed).permutation(n)
    val = np.zeros(n, bool)
    val[order[:n_val]] = True
    return rows.filter(pa.array(~val)), rows.filter(pa.array(val))


def labels_of(batch: pa.Table, dims: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(y [B, D] float with 0 where unlabelled, mask [B, D] bool)."""
    ys, masks = [], []
    for d in dims:
        col = batch.column(f"y_{d}").to_pylist()
        masks.append([v is not None for v in col])
        ys.append([0 if v is None else v for v in col])
    return torch.tensor(ys, dtype=torch.float32).T, torch.tensor(masks).T


def noisy_pair(z_a: torch.Tensor, z_b: torch.Tensor, t: torch.Tensor, eps: torch.Tensor):
    """Both latents noised with the SAME eps and t (the preference is assumed unchanged by identical noise)."""
    from raypipe.flow.losses import noised

    return noised(z_a, eps, t)[0], noised(z_b, eps, t)[0]


def draw_t(n: int, generator: torch.Generator, noise: str) -> torch.Tensor:
    if noise == "clean":
        return torch.zeros(n)
    if noise == "uniform":
        return torch.rand(n, generator=generator)
    raise ConfigError(f"train.noise must be one of {NOISE}, got {noise!r}")


def pair_loss(engine, t_cfg, z_a, z_b, text, y, mask, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """BT/BTT loss of the latent reward on one batch of latent pairs, both noised with the same t and eps (drawn
    on the CPU from `generator`); labels y / mask [B, D] move to the model's device."""
    from raypipe.reward.losses import reward_loss

    tt = draw_t(z_a.shape[0], generator, t_cfg.noise)
    eps = torch.randn(z_a.shape, generator=generator)
    x_a, x_b = noisy_pair(z_a, z_b, tt, eps)
    r = engine(torch.cat([x_a, x_b]), torch.cat([tt, tt]), torch.cat([text, text]))
    n = z_a.shape[0]
    loss, stats = reward_loss(t_cfg.loss, r[:n], r[n:], y.to(r.device), mask.to(r.device), theta=t_cfg.theta)
    acc = stats.get("accuracy", float("nan"))
    return loss, ({"accuracy": acc} if acc == acc else {})


def batch_pair_loss(engine, t_cfg, batch: pa.Table, dims, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """`pair_loss` of a latent-cache batch (latents_A, latents_B, text, y_<DIM>)."""
    y, mask = labels_of(batch, list(dims))
    z_a = torch.from_numpy(tensor_of(batch, "latents_A")).float()
    z_b = torch.from_numpy(tensor_of(batch, "latents_B")).float()
    text = torch.from_numpy(tensor_of(batch, "text")).float()
    return pair_loss(engine, t_cfg, z_a, z_b, text, y, mask, generator)


# --- evaluation ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def bucket_accuracy(
    model, val: pa.Table, dims: list[str], draws: int = 4, seed: int = 0, buckets=BUCKETS, batch: int = 64
) -> dict:
    """Pairwise accuracy (decisive labels; r_A = r_B counts wrong) per dimension per t bucket, t drawn uniformly
    inside each bucket, `draws` noise draws per pair, the same eps for both sides."""
    ok = val
    if "error" in val.column_names:
        import pyarrow.compute as pc

        ok = val.filter(pc.is_null(val.column("error")))
    g = torch.Generator().manual_seed(seed)
    out: dict = {}
    edges = list(zip(buckets[:-1], buckets[1:]))
    correct = np.zeros((len(edges), len(dims)))
    total = np.zeros((len(edges), len(dims)))
    for start in range(0, ok.num_rows, batch):
        part = ok.slice(start, batch)
        z_a = torch.from_numpy(tensor_of(part, "latents_A")).float()
        z_b = torch.from_numpy(tensor_of(part, "latents_B")).float()
        text = torch.from_numpy(tensor_of(part, "text")).float()
        y, mask = labels_of(part, dims)
        decisive = (mask & (y != 0)).numpy()
        for bi, (lo, hi) in enumerate(edges):
            for _ in range(draws):
                tt = lo + (hi - lo) * torch.rand(z_a.shape[0], generator=g)
                eps = torch.randn(z_a.shape, generator=g)
                x_a, x_b = noisy_pair(z_a, z_b, tt, eps)
                delta = (model(x_a, tt, text) - model(x_b, tt, text)).float().cpu().numpy()
                right = np.sign(delta) == y.numpy()
                correct[bi] += (right & decisive).sum(0)
                total[bi] += decisive.sum(0)
    for j, d in enumerate(dims):
        out[d] = {
            f"[{lo:g},{hi:g})": (float(correct[bi, j] / total[bi, j]) if total[bi, j] else None)
            for bi, (lo, hi) in enumerate(edges)
        }
    out["n_pairs"] = int(ok.num_rows)
    out["draws"] = draws
    return out
