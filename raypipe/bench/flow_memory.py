"""`raypipe bench flow-memory`: peak memory and step time of a Flow-DPO step vs an SFT step on the same videos.

Variants, each in a fresh process (peak RSS is per process), same transformer (a Wan2.1-shaped
WanTransformer3DModel, random weights, LoRA r=64 on q/k/v/o), same latents and text embeddings:
  sft            — flow matching on the 2P videos of P pairs (one forward + backward);
  dpo            — Flow-DPO on the P pairs: policy forward + backward on 2P videos, reference = adapters disabled
                   under no_grad (raypipe's way: no second copy of the weights);
  dpo_ref_copy   — the same loss with a separate frozen deep copy of the base model as reference (the baseline
                   OpenRLHF-style trainers use).
Reports peak RSS above the process's baseline after imports (weights + optimizer + activations) and the median
step time; ratios dpo/sft and dpo_ref_copy/sft. Target: dpo/sft peak ≤ 1.15.
"""

from __future__ import annotations

import copy
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

SIZES = {  # Wan2.1-1.3B is 30 layers x 12 heads x 128 (hidden 1536), ffn 8960, text 4096
    "small": {"layers": 4, "heads": 4, "head_dim": 64, "ffn": 1024, "text_dim": 512},
    "medium": {"layers": 8, "heads": 8, "head_dim": 64, "ffn": 2048, "text_dim": 1024},
}


def _rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_variant(variant: str, size: str, pairs: int, steps: int, seed: int = 0) -> dict:
    """One variant in this process (call in a fresh process)."""
    import torch
    from diffusers import WanTransformer3DModel

    from raypipe.flow.lora import add_lora, lora_parameters
    from raypipe.flow.losses import noised, sample_t

    torch.manual_seed(seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    s = SIZES[size]
    base_rss = _rss_peak_mb()
    model = WanTransformer3DModel(**_transformer_kwargs(s))
    ref_copy = copy.deepcopy(model).requires_grad_(False).eval() if variant == "dpo_ref_copy" else None
    add_lora(model, r=64, alpha=128)
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-5)
    g = torch.Generator().manual_seed(seed)
    z_w = torch.randn(pairs, 16, 3, 16, 16, generator=g)  # latents of 9 frames at 128x128 (Wan VAE: /4, /8)
    z_l = torch.randn(pairs, 16, 3, 16, 16, generator=g)
    text = torch.randn(pairs, 32, s["text_dim"], generator=g)

    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        t = sample_t(pairs, g, 3.0)
        eps = torch.randn(z_w.shape, generator=g)
        xw, vw = noised(z_w, eps, t)
        xl, vl = noised(z_l, eps, t)
        x, target = torch.cat([xw, xl]), torch.cat([vw, vl])
        tt, cc = torch.cat([t, t]), torch.cat([text, text])
        loss = _variant_loss(variant, model, ref_copy, x, target, tt, cc, t, pairs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - t0)
    return _variant_result(variant, size, pairs, model, base_rss, times)


def _transformer_kwargs(s: dict) -> dict:
    """WanTransformer3DModel arguments of a Wan2.1-shaped transformer with the dimensions of SIZES entry `s`."""
    return dict(
        patch_size=(1, 2, 2),
        num_attention_heads=s["heads"],
        attention_head_dim=s["head_dim"],
        in_channels=16,
        out_channels=16,
        text_dim=s["text_dim"],
        freq_dim=256,
        ffn_dim=s["ffn"],
        num_layers=s["layers"],
        rope_max_seq_len=64,
    )


def _velocity(m, x, t, c):
    """Transformer `m`'s predicted velocity for noised latents `x` at times `t` (in [0, 1]) and text `c`."""
    return m(hidden_states=x, timestep=1000 * t, encoder_hidden_states=c, return_dict=False)[0]


def _variant_loss(variant: str, model, ref_copy, x, target, tt, cc, t, pairs: int):
    """The step's loss: SFT on all 2P videos, or Flow-DPO on the P pairs against the adapters-disabled
    reference (`ref_copy` None) or the frozen copy `ref_copy`."""
    import torch

    from raypipe.flow.lora import reference
    from raypipe.flow.losses import beta_t, dpo_loss, flow_error, sft_loss

    if variant == "sft":
        return sft_loss(flow_error(_velocity(model, x, tt, cc), target))
    err = flow_error(_velocity(model, x, tt, cc), target)
    if ref_copy is None:
        with reference(model):
            err_ref = flow_error(_velocity(model, x, tt, cc), target)
    else:
        with torch.no_grad():
            err_ref = flow_error(_velocity(ref_copy, x, tt, cc), target)
    loss, _ = dpo_loss(err[:pairs], err_ref[:pairs], err[pairs:], err_ref[pairs:], beta_t(500, t))
    return loss


def _variant_result(variant: str, size: str, pairs: int, model, base_rss: float, times: list) -> dict:
    """The variant's JSON row: transformer size, peak RSS (absolute and above `base_rss`), median step time."""
    params = sum(p.numel() for p in model.parameters())
    return {
        "variant": variant,
        "size": size,
        "pairs": pairs,
        "videos_per_step": 2 * pairs,
        "transformer_params_m": round(params / 1e6, 2),
        "peak_rss_mb": round(_rss_peak_mb(), 1),
        "peak_above_imports_mb": round(_rss_peak_mb() - base_rss, 1),
        "step_s_median": round(sorted(times)[len(times) // 2], 4),
    }


def run_flow_memory_bench(args) -> dict:
    results = {}
    for variant in ("sft", "dpo", "dpo_ref_copy"):
        print(f"{variant} ...", flush=True)
        code = (
            "import json; from raypipe.bench.flow_memory import run_variant; "
            f"print('RESULT' + json.dumps(run_variant({variant!r}, {args.size!r}, {args.pairs}, {args.steps})))"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"variant {variant} failed:\n{proc.stderr[-2000:]}")
        line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
        results[variant] = json.loads(line[len("RESULT") :])
        print(
            f"    peak {results[variant]['peak_above_imports_mb']} MB above imports, step "
            f"{results[variant]['step_s_median']} s",
            flush=True,
        )
    sft, dpo, copy_ = results["sft"], results["dpo"], results["dpo_ref_copy"]
    out = {
        "benchmark": "flow-memory",
        "size": args.size,
        "pairs": args.pairs,
        "steps": args.steps,
        **results,
        "peak_ratio_dpo_over_sft": round(dpo["peak_above_imports_mb"] / sft["peak_above_imports_mb"], 3),
        "peak_ratio_ref_copy_over_sft": round(copy_["peak_above_imports_mb"] / sft["peak_above_imports_mb"], 3),
        "time_ratio_dpo_over_sft": round(dpo["step_s_median"] / sft["step_s_median"], 3),
        "time_ratio_ref_copy_over_sft": round(copy_["step_s_median"] / sft["step_s_median"], 3),
        "target": {"peak_ratio_dpo_over_sft": "<= 1.15"},
        "machine": {"cpu_count": os.cpu_count()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    return out
