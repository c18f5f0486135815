"""LoRA on the generator's transformer (peft through diffusers' adapter API), the reference model without a copy,
and adapters saved in the format the family's pipeline (`WanPipeline` / `CogVideoXPipeline`) `load_lora_weights` reads
(a pipeline without a diffusers LoRA loader, HunyuanVideo 1.5: the same transformer-only file, read by the
transformer's `load_lora_adapter`).

    add_lora(gen.transformer, r=64, alpha=128, targets=gen.lora_targets)   # only adapter weights train
    with reference(gen.transformer):                                        # adapters off, no_grad: the base model
        v_ref = gen.velocity(z_t, t, text)
    save_lora(gen, "out/lora")   ->  pipe.load_lora_weights("out/lora")
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

ADAPTER = "raypipe"


def add_lora(
    transformer,
    r: int = 64,
    alpha: int = 128,
    dropout: float = 0.0,
    targets=("to_q", "to_k", "to_v", "to_out.0"),
    experts: str = "both",
) -> None:
    """Attach a LoRA adapter (B = 0 at init, so the policy starts equal to the reference) and freeze the rest.
    `experts` (Wan2.2 A14B): both, high (the high-noise expert only) or low; the losses then draw t where the
    trained experts work (`WanExperts.t_range`)."""
    from peft import LoraConfig

    if hasattr(transformer, "select"):
        transformer.select(("high", "low") if experts == "both" else (experts,))
    elif experts != "both":
        raise ValueError(f"lora.experts={experts!r} applies to Wan2.2 A14B's two experts; this generator has one")
    transformer.requires_grad_(False)
    transformer.add_adapter(
        LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), init_lora_weights=True),
        adapter_name=ADAPTER,
    )
    for name, p in transformer.named_parameters():
        p.requires_grad_("lora_" in name)


def lora_parameters(transformer) -> list[torch.nn.Parameter]:
    return [p for n, p in transformer.named_parameters() if "lora_" in n]


@contextlib.contextmanager
def reference(transformer):
    """The reference model of Flow-DPO: the same network with its adapters disabled, under no_grad — or, after
    `set_reference(transformer, state)`, with the adapters `state` in place of its own (put back on exit, without
    touching autograd's version counters: a policy forward taken before stays valid for its backward)."""
    swap = getattr(transformer, _REFERENCE_ATTR, None)
    if swap is None:
        transformer.disable_adapters()
        try:
            with torch.no_grad():
                yield transformer
        finally:
            transformer.enable_adapters()
        return
    params = dict(transformer.named_parameters())
    saved = {name: params[name].data.clone() for name in swap}
    for name, value in swap.items():
        params[name].data.copy_(value)
    try:
        with torch.no_grad():
            yield transformer
    finally:
        for name, value in saved.items():
            params[name].data.copy_(value)


_REFERENCE_ATTR = "_raypipe_reference_adapters"


def set_reference(transformer, state: dict[str, torch.Tensor] | None) -> None:
    """`reference(transformer)` becomes the model with the adapters `state` (a LoRA state as peft's
    `get_peft_model_state_dict` names it: online DPO's "policy of N rounds ago"); None: the base again."""
    if state is None:
        if hasattr(transformer, _REFERENCE_ATTR):
            delattr(transformer, _REFERENCE_ATTR)
        return
    swap = {}
    for name, param in transformer.named_parameters():
        if "lora_" in name and f".{ADAPTER}." in name:
            key = name.replace(f".{ADAPTER}.", ".")
            if key not in state:
                raise KeyError(f"the reference adapters lack {key}")
            swap[name] = state[key].detach().to(param.device, param.dtype)  # once, where the swap copies it
    if len(swap) != len(state):
        raise KeyError(f"the reference adapters have {len(state)} tensors, the model {len(swap)}")
    object.__setattr__(transformer, _REFERENCE_ATTR, swap)


def save_lora(family, path: str | os.PathLike) -> Path:
    """Adapter weights as `pytorch_lora_weights.safetensors`, loadable with the family pipeline's
    `load_lora_weights` (written by that pipeline class's own `save_lora_weights`). Wan2.2 A14B: the high-noise
    expert's as that file, the low-noise expert's as `pytorch_lora_weights_transformer_2.safetensors` (loaded
    with `load_into_transformer_2=True`; `load_lora` does both)."""
    from peft.utils import get_peft_model_state_dict

    from raypipe.flow.wan22 import LOW_NOISE_WEIGHTS, WanExperts, split_state

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(family.transformer, adapter_name=ADAPTER)
    config = family.transformer.peft_config[ADAPTER].to_dict()  # carries lora_alpha: the scale r/alpha survives
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    parts = {"high": state}
    if isinstance(family.transformer, WanExperts):
        parts = split_state(state)
    if not hasattr(type(family.pipeline), "save_lora_weights"):  # no diffusers LoRA loader (HunyuanVideo 1.5)
        _save_transformer_lora(path, state, config)
        return path
    for expert, layers in parts.items():
        type(family.pipeline).save_lora_weights(
            str(path),
            transformer_lora_layers=layers,
            safe_serialization=True,
            transformer_lora_adapter_metadata=config,
            weight_name=LOW_NOISE_WEIGHTS if expert == "low" else None,
        )
    return path


def _save_transformer_lora(path: Path, state: dict, config: dict) -> None:
    """A pipeline diffusers gives no LoRA loader: the file its transformer-only loaders write (diffusers' shared
    `LoraBaseMixin._save_lora_weights`: `transformer.`-prefixed keys, the adapter config as metadata), which the
    transformer's own `load_lora_adapter(prefix="transformer")` reads (`load_lora`)."""
    from diffusers.loaders.lora_base import LoraBaseMixin

    LoraBaseMixin._save_lora_weights(
        str(path),
        lora_layers={"transformer": state},
        lora_metadata={"transformer": config},
        safe_serialization=True,
    )


def load_lora(pipeline, path: str | os.PathLike, adapter_name: str | None = None) -> None:
    """Adapters written by `save_lora` into a pipeline (both Wan2.2 A14B experts when both files are there)."""
    from raypipe.flow.wan22 import LOW_NOISE_WEIGHTS

    path = Path(path)
    high = path / "pytorch_lora_weights.safetensors"
    if not hasattr(pipeline, "load_lora_weights"):  # no diffusers LoRA loader (HunyuanVideo 1.5): the model's own
        pipeline.transformer.load_lora_adapter(
            str(path), prefix="transformer", weight_name=high.name, adapter_name=adapter_name, local_files_only=True
        )
        return
    if high.exists() or not (path / LOW_NOISE_WEIGHTS).exists():
        pipeline.load_lora_weights(str(path), adapter_name=adapter_name)
    if (path / LOW_NOISE_WEIGHTS).exists():
        pipeline.load_lora_weights(
            str(path), weight_name=LOW_NOISE_WEIGHTS, adapter_name=adapter_name, load_into_transformer_2=True
        )
