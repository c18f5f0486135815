"""The Ray room: the only library package (with `serve/`, `recipes/` and `bench/`) that imports Ray.

- `cluster`: connect to a cluster or start a local Ray; the Ray Data context our jobs share.
- `arrow`: Ray's Arrow tensor columns (decoded frames, latents).
- `decode`: THE decode stage (manifest rows in blocks -> CPU tasks decoding videos), used by the pair pipeline,
  the latent cache and scoring.
- `scoring`, `latents`: the actor pools (reward scoring, VAE/text encoding) behind that stage.
- `trainer`: the TorchTrainer driver, the DeepSpeed config and engine, step counting; `loop`: the small named steps
  every worker loop uses (resume, skip what was consumed, rank agreement, save-and-report, out of time).
"""
