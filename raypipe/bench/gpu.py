"""`raypipe bench gpu`: the GPU path of every trainable model at its real size, on one device, without Ray.

    raypipe bench gpu --out bench-out/gpu.json                 # on a GPU machine: real shapes, bf16, NCCL
    raypipe bench gpu --out /tmp/gpu.json --size tiny          # anywhere: the same code at tiny shapes (CPU, gloo)
    python -m raypipe.bench.gpu --out gpu.json                 # the same, where Ray is not installed

Random weights at the shapes of the real checkpoints (nothing is downloaded):
- reward: VideoReward on a Qwen2-VL-2B-shaped backbone (LoRA r=64 on the language model, the vision tower and the
  reward tokens trained, SPEC §3.1) in a DeepSpeed ZeRO-2 engine over a one-rank NCCL group; videos of 8 frames
  at 448x448 (2 fps x 4 s, the 2B preset's pixel budget) -> 1024 video tokens each. Per setting (pairs per step,
  gradient checkpointing on/off): seconds per step, pairs/s, peak GPU memory; then scoring videos/s (eval, bf16).
- flow: Flow-DPO / SFT / Flow-RWR steps (`raypipe.flow.training.algo_loss`, the function train-flow runs) on a
  Wan2.1-T2V-1.3B-shaped transformer with LoRA r=64 on q/k/v/o, 33x480x832 clips (latents 16x9x60x104, 14040
  tokens), cached text embeddings (226 x 4096): seconds per step and peak memory per batch size, with and
  without gradient checkpointing.
- nrg: the Flow-NRG sampler (`raypipe.flow.sampler.sample` + `raypipe.nrg.guidance.RewardGuidance`) with a latent
  reward on the generator's first 8 blocks: seconds per denoising step with CFG, unguided vs guided; then that
  latent reward's training step (`raypipe.nrg.training.pair_loss`, BTT on noisy pairs, ZeRO-2).

Settings run from the least to the most memory; the first out-of-memory one ends its sweep (recorded as "oom").
Results go to OUT (JSON, rewritten after every part) and a table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from raypipe.bench.gpu_flow import bench_flow
from raypipe.bench.gpu_harness import FAMILIES, init_single_rank
from raypipe.bench.gpu_nrg import bench_nrg
from raypipe.bench.gpu_reward import bench_reward

# The parts live beside this file and share `gpu_harness`; the arguments are the table `raypipe.bench.cli.BENCHES`.
BENCH_PARTS = {"reward": bench_reward, "flow": bench_flow, "nrg": bench_nrg}  # part -> fn(args, size, device, dtype)
PARTS = tuple(BENCH_PARTS)


# --- driver ------------------------------------------------------------------------------------------------------
def run(args) -> dict:
    import torch

    size, device, dtype = _device(args.size)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"--parts: unknown {unknown} (choose from {', '.join(PARTS)})")
    families = [f.strip() for f in args.family.split(",") if f.strip()]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise SystemExit(f"--family: unknown {unknown} (choose from {', '.join(FAMILIES)})")
    cuda = device.type == "cuda"
    init_single_rank("nccl" if cuda else "gloo")  # imports deepspeed: after _device set DS_ACCELERATOR
    import deepspeed
    import torch.distributed as dist

    report = {
        "size": size,
        "dtype": dtype,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "backend": dist.get_backend(),
        "torch": torch.__version__,
        "deepspeed": deepspeed.__version__,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
        "steps": args.steps,
        "warmup": args.warmup,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # the flow part once per --family: "flow" for the first, "flow:NAME" for the others
    runs = [(p, f) for p in parts for f in (families if p == "flow" else [None])]
    for part, family in runs:
        key = part if family in (None, families[0]) else f"{part}:{family}"
        print(f"bench gpu: {key} ({size}, {dtype}, {report['device']})", flush=True)
        t0 = time.perf_counter()
        report[key] = BENCH_PARTS[part](argparse.Namespace(**{**vars(args), "family": family}), size, device, dtype)
        report[key]["part_s"] = round(time.perf_counter() - t0, 1)
        out.write_text(json.dumps(report, indent=2))
    print_table(report)
    return report


def _device(size: str | None):
    """(size, device, dtype): real shapes, cuda:0 and bf16 on a GPU; tiny, the CPU and float32 otherwise."""
    import torch

    cuda = torch.cuda.is_available()
    size = size or ("real" if cuda else "tiny")
    if size == "real" and not cuda:
        raise SystemExit("bench gpu --size real needs a CUDA GPU (bf16, ~40+ GB); use --size tiny on a CPU")
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cuda else "cpu")
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return size, device, "bfloat16" if cuda else "float32"


def print_table(report: dict) -> None:
    print(
        f"\n{report['device']}  {report['dtype']}  backend={report['backend']}  torch {report['torch']}  "
        f"deepspeed {report['deepspeed']}",
        flush=True,
    )
    for part in ("reward", "flow", *sorted(k for k in report if k.startswith("flow:"))):
        if part not in report:
            continue
        r = report[part]
        print(f"{part}: {r['model']}  params {r['params'] / 1e6:.0f}M  trainable {r['trainable_params'] / 1e6:.0f}M")
        for row in r["train"]:
            what = row.get("algo", "btt")
            head = f"  {what:<4} pairs={row['pairs']} ckpt={'on ' if row['gradient_checkpointing'] else 'off'}"
            if "s_per_step" in row:
                rate = row.get("pairs_per_s", row.get("videos_per_s"))
                unit = "pairs/s" if "pairs_per_s" in row else "videos/s"
                print(f"{head}  {row['s_per_step']:.3f} s/step  {rate} {unit}  peak {row['peak_gib']} GiB")
            else:
                print(f"{head}  {row['result']}")
        if part == "reward":
            sc = r["scoring"]
            print(f"  scoring batch {sc['batch']}: {sc['videos_per_s']} videos/s  peak {sc['peak_gib']} GiB")
    if "nrg" in report:
        n = report["nrg"]
        for row in n["rows"]:
            print(
                f"nrg {row['sampler']:<9} {row['s_per_denoising_step']:.3f} s/denoising step  "
                f"peak {row['peak_gib']} GiB"
            )
        print(f"nrg guided/unguided step time: {n['guided_over_unguided']}")
        for row in n.get("train", []):
            head = f"latent reward train pairs={row['pairs']} ckpt={'on ' if row['gradient_checkpointing'] else 'off'}"
            print(
                f"{head}  {row['s_per_step']:.3f} s/step  {row['pairs_per_s']} pairs/s  peak {row['peak_gib']} GiB"
                if "s_per_step" in row
                else f"{head}  {row['result']}"
            )


def main(argv=None) -> int:
    from raypipe.bench.cli import BENCHES

    parser = argparse.ArgumentParser(
        prog="python -m raypipe.bench.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for flags, kwargs in BENCHES["gpu"].args:
        parser.add_argument(*flags, **kwargs)
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
