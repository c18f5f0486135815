"""Wan2.2 A14B's two experts as one trainable module: `transformer` (high noise) takes the timesteps at or above the
pipeline's boundary, `transformer_2` (low noise) the ones below, exactly as diffusers' `WanPipeline` switches them
(`t ≥ boundary_ratio · num_train_timesteps` → `transformer`; our flow time t is that timestep / 1000).

    experts = WanExperts(pipe.transformer, pipe.transformer_2, boundary=0.875, trained=("high", "low"))
    v = experts(hidden_states=z_t, timestep=1000 * t, encoder_hidden_states=text, return_dict=False)[0]
    add_lora(experts, r=64, alpha=128)            # LoRA on the trained experts only; the rest frozen
    with reference(experts): ...                  # adapters disabled on both
    experts.t_range                               # the flow times the trained experts see: where the losses sample t

A batch whose samples fall on both sides of the boundary is split, each part run through its expert, and put back
in order. LoRA of the high-noise expert is saved as the pipeline's `transformer` adapters
(`pytorch_lora_weights.safetensors`), the low-noise expert's as `pytorch_lora_weights_transformer_2.safetensors`
(diffusers loads it with `load_lora_weights(..., load_into_transformer_2=True)`).
"""

from __future__ import annotations

import torch

EXPERTS = ("high", "low")
LOW_NOISE_WEIGHTS = "pytorch_lora_weights_transformer_2.safetensors"


class WanExperts(torch.nn.Module):
    """The two Wan2.2 experts behind one `forward` with the transformer's signature."""

    def __init__(self, high, low, boundary: float, trained: tuple[str, ...] = EXPERTS):
        super().__init__()
        self.high, self.low = high, low
        self.boundary = float(boundary)
        self.select(trained)

    def select(self, trained) -> None:
        """Which experts get LoRA adapters (and gradients): ("high", "low"), ("high",) or ("low",)."""
        trained = tuple(trained)
        if not trained or any(e not in EXPERTS for e in trained):
            raise ValueError(f"trained experts must be a non-empty subset of {EXPERTS}, got {trained}")
        self.trained = trained

    @property
    def t_range(self) -> tuple[float, float] | None:
        """The flow times the trained experts handle (None: all of [0, 1])."""
        if len(self.trained) == 2:
            return None
        return (self.boundary, 1.0) if self.trained == ("high",) else (0.0, self.boundary)

    def expert_of(self, timestep: torch.Tensor) -> torch.Tensor:
        """True where a sample's timestep (1000·t; per sample, or per token as Wan2.2 TI2V passes it) goes to the
        high-noise expert."""
        per_sample = timestep if timestep.dim() == 1 else timestep.amax(dim=tuple(range(1, timestep.dim())))
        return per_sample >= self.boundary * 1000.0

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict: bool = False, **kwargs):
        high = self.expert_of(timestep)
        # Training both experts, every rank runs both, in the same order, every step (an expert without samples runs
        # on one sample and adds 0 x its output): each rank then reduces the same gradients in the same order, which
        # ZeRO-2's bucketed reduction needs when ranks draw their timesteps apart. Under ZeRO-3 every forward (the
        # reference pass too) gathers each expert's partitioned weights with collectives all ranks must join: both
        # experts always run.
        both = self.partitioned() or (
            torch.is_grad_enabled() and len(self.trained) == 2 and any(p.requires_grad for p in self.parameters())
        )
        if not both and (bool(high.all()) or bool((~high).all())):
            expert = self.high if bool(high.all()) else self.low
            return expert(hidden_states, timestep, encoder_hidden_states, return_dict=False, **kwargs)
        n = hidden_states.shape[0]

        def run(expert, rows_mask):  # per-sample keyword tensors (an image encoder's states) follow their samples
            rows = {k: v[rows_mask] if torch.is_tensor(v) and v.shape[:1] == (n,) else v for k, v in kwargs.items()}
            x, ts, enc = hidden_states[rows_mask], timestep[rows_mask], encoder_hidden_states[rows_mask]
            return expert(x, ts, enc, return_dict=False, **rows)[0]

        return (self.route(high, run, both),)

    def route(self, high: torch.Tensor, run, both: bool) -> torch.Tensor:
        """Each sample through its expert: `run(expert, rows)` gives an expert's outputs for the rows of a boolean
        mask, `high` marks the high-noise expert's rows. With `both`, an expert without rows runs on the first one and
        adds 0 x its output, so both experts take part in every forward and backward (the generator's forward and
        the latent reward's trunks route alike)."""
        out, idle = None, []
        for mask, expert in ((high, self.high), (~high, self.low)):
            if not bool(mask.any()):
                if both:
                    first = torch.zeros_like(mask)
                    first[0] = True
                    idle.append(run(expert, first).sum() * 0.0)
                continue
            part = run(expert, mask)
            if out is None:
                out = part.new_zeros((mask.shape[0], *part.shape[1:]))
            out = out.index_put((mask.to(out.device),), part)
        for zero in idle:
            out = out + zero
        return out

    def partitioned(self) -> bool:
        """Whether DeepSpeed ZeRO-3 has partitioned the experts' weights across ranks."""
        return hasattr(next(self.high.parameters()), "ds_id")

    # --- what the training code asks of a diffusers transformer ------------------------------------------------
    def experts(self, trained_only: bool = False):
        names = self.trained if trained_only else EXPERTS
        return [getattr(self, n) for n in names]

    def add_adapter(self, config, adapter_name: str) -> None:
        for expert in self.experts(trained_only=True):
            expert.add_adapter(config, adapter_name=adapter_name)

    def _with_adapters(self):
        return [e for e in self.experts() if getattr(e, "peft_config", None)]

    def disable_adapters(self) -> None:
        for expert in self._with_adapters():
            expert.disable_adapters()

    def enable_adapters(self) -> None:
        for expert in self._with_adapters():
            expert.enable_adapters()

    @property
    def peft_config(self) -> dict:
        experts = self._with_adapters()
        return experts[0].peft_config if experts else {}

    @property
    def config(self):
        return self.high.config

    @property
    def dtype(self) -> torch.dtype:
        return self.high.dtype

    @property
    def device(self) -> torch.device:
        return self.high.device

    def enable_gradient_checkpointing(self) -> None:
        for expert in self.experts():
            expert.enable_gradient_checkpointing()

    def disable_gradient_checkpointing(self) -> None:
        for expert in self.experts():
            expert.disable_gradient_checkpointing()


def split_state(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """A WanExperts LoRA state ("high.blocks…", "low.blocks…") as one state per expert, prefixes dropped."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        expert, _, rest = key.partition(".")
        if expert not in EXPERTS:
            raise KeyError(f"{key} belongs to neither expert")
        out.setdefault(expert, {})[rest] = value
    return out


def trained_steps(transformer, times: torch.Tensor) -> list[int] | None:
    """The indices of sampling steps (starting at `times`) whose expert has adapters (GRPO trains only those);
    None when every step does (one transformer, or both experts trained)."""
    if not isinstance(transformer, WanExperts) or len(transformer.trained) == 2:
        return None
    high = transformer.expert_of(1000.0 * torch.as_tensor(times, dtype=torch.float32))
    want = transformer.trained == ("high",)
    return [j for j, h in enumerate(high.tolist()) if h == want]
