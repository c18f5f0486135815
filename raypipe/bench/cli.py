"""The `raypipe bench` sub-parsers: a table of benchmarks. Adding a bench = its module beside this file + one entry
in `BENCHES` (its run function, help, description and arguments as data)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
from dataclasses import dataclass

from raypipe.bench.gpu import PARTS as GPU_PARTS
from raypipe.bench.gpu_harness import FAMILIES as GPU_FAMILIES
from raypipe.bench.online import ARMS as ONLINE_ARMS
from raypipe.config import EPILOG_OVERRIDES

Arg = tuple[tuple[str, ...], dict]  # one `add_argument` call: its flags and keyword arguments


def arg(*flags: str, **kwargs) -> Arg:
    return flags, kwargs


@dataclass(frozen=True)
class Bench:
    module: str  # raypipe.bench.<module>, imported only when the bench runs
    function: str  # its `function(args) -> dict`
    help: str
    description: str
    args: tuple[Arg, ...]
    epilog: str | None = None
    print_json: bool = True  # print the returned dict (False: the bench prints its own table)


OUT_JSON = arg("--out", required=True, help="JSON output path")
OUT_DIR = arg("--out", required=True, help="output folder")
NUM_CPUS = arg("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
SEED = arg("--seed", type=int, default=0)
CLIP = (
    arg("--frames", type=int, default=9),
    arg("--height", type=int, default=32),
    arg("--width", type=int, default=32),
)
REWARD_TINY = arg("--config", default="configs/reward_tiny.yaml", help="base config (default reward_tiny)")
CHECKPOINT = arg("--reward", default=None, help="reward checkpoint (default: an untrained tiny one)")
NRG_WEIGHTS = ["{TA: 1}", "{VQ: 0.1, MQ: 0.1, TA: 0.8}", "{VQ: 0.5, MQ: 0.5}"]

BENCHES: dict[str, Bench] = {
    "decode": Bench(
        "decode",
        "run_decode_bench",
        "pairs/s: tight decord loop vs our Ray Data pipeline vs read_videos",
        "On SynthPref clips of realistic size, measure in one run (a) a single-process decord get_batch loop, (b) the "
        "Ray Data pair pipeline, (c) ray.data.read_videos keeping the same frames. Writes JSON.",
        (
            OUT_JSON,
            arg("--pairs", type=int, default=24, help="pairs to decode (default 24)"),
            arg("--seconds", type=float, default=5.0, help="clip length (default 5 s)"),
            arg("--video-fps", type=float, default=24.0, help="clip frame rate (default 24)"),
            arg("--size", default="360x640", help="clip HxW (default 360x640)"),
            arg("--fps", type=float, default=2.0, help="sampling fps (default 2)"),
            NUM_CPUS,
            arg("--rows-per-block", type=int, default=1, help="pairs per decode task in (b) (default 1)"),
            arg("--data-dir", default=None, help="where to write the clips (default: OUT's folder)"),
        ),
    ),
    "reward-ablation": Bench(
        "reward_ablation",
        "run_reward_ablation",
        "Table 6 in miniature: regression / BT / BTT / BTT last-token",
        "Train each reward variant with the same data and budget on SynthPref (with ties) and write ablation.json + "
        "ablation.md (accuracy with/without ties over seeds, t-intervals, a verdict per claim); rerun to resume.",
        (
            OUT_DIR,
            REWARD_TINY,
            arg("--pairs", type=int, default=2048, help="training pairs (default 2048)"),
            arg("--val-pairs", type=int, default=256, dest="val_pairs", help="held-out pairs (default 256)"),
            arg("--steps", type=int, default=150, help="optimizer steps per variant (default 150)"),
            arg("--epochs", type=int, default=2),
            arg("--seeds", default="0", help="comma list of seeds: data and training per seed (default 0)"),
            arg("--variants", default=None, help="comma list (default: regression,bt,btt,btt_last_token)"),
            arg("overrides", nargs="*", help="key=value overrides applied to every variant"),
        ),
        epilog=EPILOG_OVERRIDES,
    ),
    "reward-throughput": Bench(
        "reward_throughput",
        "run_reward_throughput",
        "train-reward pairs/s per worker and data wait: streamed vs cached frames, ZeRO-2 vs ZeRO-0",
        "Train the same config for the same steps on the same SynthPref pairs with (a) frames decoded every epoch, "
        "(b) decoded once into the object store (data.cache_frames), (c) the cache with ZeRO-0; writes JSON with "
        "pairs/s per worker, the data-wait share and ratios against (a).",
        (
            arg("--out", required=True, help="JSON output path (work files go beside it)"),
            REWARD_TINY,
            arg("--pairs", type=int, default=1024, help="training pairs (default 1024)"),
            arg("--steps", type=int, default=240, help="optimizer steps per setting (default 240)"),
            SEED,
            arg("--settings", default=None, help="comma list (default: stream_zero2,cache_zero2,cache_zero0)"),
            arg("overrides", nargs="*", help="key=value overrides applied to every setting"),
        ),
        epilog=EPILOG_OVERRIDES,
    ),
    "relabel": Bench(
        "relabel",
        "run_relabel_bench",
        "videos/s: reference decode-8-score-8 loop vs relabel with 1 and 2 actors",
        "On the same SynthPref videos and tiny checkpoint, measure in one run (a) a single-process "
        "decode-a-batch-then-score loop like the public reference code, (b) raypipe relabel with 1 scoring actor, "
        "(c) with 2. Writes JSON.",
        (
            OUT_JSON,
            arg("--pairs", type=int, default=1024, help="SynthPref pairs (videos = 2x; default 1024)"),
            arg("--seed", type=int, default=7),
            arg(
                "--batch",
                type=int,
                default=32,
                help="most videos per forward pass in (b)/(c) (default 32; (a) always takes 8)",
            ),
            arg(
                "--decode-rows",
                type=int,
                default=32,
                dest="decode_rows",
                help="most videos per decode task in (b)/(c) (default 32)",
            ),
            arg(
                "--rows",
                default=None,
                help="instead of (a)-(c): comma list of pair-row counts (e.g. 1000,1000000,10000000), each relabelled "
                "over the same 100 videos by a fresh process: driver peak RSS and the row side's rows/s",
            ),
            CHECKPOINT,
            NUM_CPUS,
        ),
    ),
    "flow-memory": Bench(
        "flow_memory",
        "run_flow_memory_bench",
        "peak memory / step time: Flow-DPO vs SFT vs DPO with a reference copy",
        "Each variant in a fresh process on a Wan2.1-shaped transformer with LoRA: SFT on 2P videos, Flow-DPO on P "
        "pairs with the disabled-adapter reference, and Flow-DPO with a separate reference copy. Writes JSON.",
        (
            OUT_JSON,
            arg("--size", choices=["small", "medium"], default="medium", help="transformer size (default medium)"),
            arg("--pairs", type=int, default=2, help="pairs per step (default 2 = 4 videos)"),
            arg("--steps", type=int, default=5, help="timed steps after 2 warm-up steps (default 5)"),
        ),
    ),
    "flow-alignment": Bench(
        "flow_alignment",
        "run_flow_alignment_bench",
        "Table 3 in miniature: SFT / Flow-RWR / Flow-DPO β_t / Flow-DPO constant β win rates over the pretrained "
        "generator",
        "Train each variant with the same LoRA, lr and steps on one pair set, then eval-flow each against the "
        "pretrained generator (reward model + oracle win rates), per seed; pooled 95% bootstrap intervals and a "
        "verdict per claim of Table 3. Writes OUT/flow_alignment.json and .md; rerun the same command to resume.",
        (
            OUT_DIR,
            arg("--generator", required=True, help="pretrained WanPipeline folder (e.g. gen-out/flow/final)"),
            arg("--reward", required=True, help="VideoReward checkpoint (the judge)"),
            arg("--pairs", required=True, help="relabel-shaped pairs (e.g. sample-pairs OUT/pairs)"),
            arg("--weights", default="{VQ: 1}", help="dimensions the pairs target (default {VQ: 1})"),
            arg("--config", default="configs/flow_tiny.yaml", help="base train-flow config"),
            arg(
                "--variants",
                default=None,
                help="comma list of sft, rwr, dpo_beta_t, dpo, dpo_sft (DPO + an SFT term on clean videos, "
                "λ_sft = 1) (default sft,rwr,dpo_beta_t,dpo)",
            ),
            arg("--steps", type=int, default=200, help="optimizer steps per variant (default 200)"),
            arg("--prompts", default="48", help="eval prompts per seed (default 48)"),
            *CLIP,
            arg("--seeds", default="0", help="comma list of seeds; each repeats training and eval (default 0)"),
            arg("overrides", nargs="*", help="train-flow key=value overrides for every variant"),
        ),
        epilog=EPILOG_OVERRIDES,
    ),
    "lift": Bench(
        "lift",
        "run_lift_bench",
        "LiFT's findings in miniature over seeds, 95%% intervals: critic with reasons vs score only; LiFT "
        "fine-tuning vs base; with vs without real videos",
        "(a) train-critic with reasons and score-only per seed, held-out rating accuracy on an untuned SynthPref seed; "
        "(b) train-flow --algo lift vs the base generator, oracle and VideoReward win rates; (c) the same without the "
        "real videos, oracle MQ. Writes OUT/lift.json and OUT/lift.md (which findings hold here, which do not).",
        (
            OUT_DIR,
            arg("--seeds", default="0,1,2", help="comma list of seeds (default 0,1,2)"),
            arg("--parts", default="critic,finetune", help="critic, finetune or both (default both)"),
            arg("--critic-config", default="configs/critic_tiny.yaml", help="base train-critic config"),
            arg("--critic-minutes", type=float, default=10.0, help="training budget per critic (default 10)"),
            arg("--val-pairs", type=int, default=96, help="held-out SynthPref pairs per seed (default 96)"),
            arg(
                "--critic-override",
                action="append",
                default=[],
                dest="critic_overrides",
                help="train-critic key=value for every critic (repeatable)",
            ),
            arg("--generator", default="assets/tiny-generator", help="the base generator (default the tiny asset)"),
            arg("--flow-config", default="configs/lift_tiny.yaml", help="base train-flow config"),
            arg("--steps", type=int, default=60, help="LiFT steps per run (default 60)"),
            arg("--prompts", default="48", help="eval prompts (default 48)"),
            arg("--reward", default=None, help="VideoReward judge (default: a tiny one trained once, as the demo)"),
            arg("overrides", nargs="*", help="train-flow key=value overrides for every fine-tuning run"),
        ),
        epilog=EPILOG_OVERRIDES,
    ),
    "paper": Bench(
        "paper",
        "run_paper_bench",
        "every miniature table of the paper (Tables 3, 5, 6, App. E) over seeds, 95%% intervals, a verdict per claim",
        "Builds a judge, pairs and latent rewards once (OUT/inputs), then runs reward-ablation, flow-alignment (VQ "
        "pairs; DPO on VQ+MQ pairs) and nrg (λ sweep, clean-latent ablation) with --seeds, and writes "
        "OUT/paper_tables.md (each table beside the paper's claim, verdicts: holds / contradicted / undecided) and "
        "OUT/paper.json. --budget small: about 30 min on 2 cores; full: about 3 hours. Rerun the same command to "
        "resume.",
        (
            OUT_DIR,
            arg("--budget", choices=["small", "full"], default="small", help="sizes of every table (default small)"),
            arg("--seeds", default=None, help="comma list of seeds (default: small 0,1; full 0,1,2)"),
            arg(
                "--prompts", type=int, default=None, help="held-out eval prompts per seed (default: small 32; full 128)"
            ),
            arg("--tables", default=None, help="comma list of reward,alignment,alignment_vq_mq,nrg (default all)"),
            arg("--generator", default="assets/tiny-generator", help="the pretrained generator (default the asset)"),
            arg("--progress", action=argparse.BooleanOptionalAction, default=True, help="a progress bar over stages"),
        ),
    ),
    "online": Bench(
        "online",
        "run_online_bench",
        "offline Flow-DPO vs online Flow-DPO vs Flow-GRPO at an equal budget of reward calls, over seeds",
        "Per seed: sample-pairs + train-flow DPO (offline), train-online dpo, train-online grpo (and, on the first "
        "seed, grpo with overlap), each spending --samples scored samples; eval-flow of each against the pretrained "
        "generator on held-out prompts: win rates by the reward model and the oracle with 95%% bootstrap intervals, "
        "the claims online >= offline with verdicts, the guard's decisions, the time split per round and the "
        "overlap speedup. Writes OUT/online.json and OUT/online.md. --budget small: about 25 min on 2 cores; full: "
        "about 2.5 hours (3 seeds). Rerun the same command to resume.",
        (
            OUT_DIR,
            arg("--budget", choices=["small", "full"], default="small", help="default sizes (default small)"),
            arg("--seeds", default=None, help="comma list of seeds (default: small 0,1; full 0,1,2)"),
            arg("--samples", type=int, default=None, help="scored samples per arm (default: small 256; full 1024)"),
            arg(
                "--prompts", type=int, default=None, help="held-out eval prompts per seed (default: small 32; full 128)"
            ),
            arg("--k", type=int, default=4, help="samples per prompt (default 4)"),
            arg("--prompts-per-round", type=int, default=4, dest="prompts_per_round", help="online (default 4)"),
            arg("--sampling-steps", type=int, default=20, dest="sampling_steps", help="every arm (default 20)"),
            arg("--updates", type=int, default=2, help="DPO passes over each pair, offline and online (default 2)"),
            arg("--batch", type=int, default=4, help="DPO pairs per optimizer step (default 4)"),
            arg("--beta", type=float, default=500.0, help="Flow-DPO beta, offline and online (default 500)"),
            arg("--checkpoint-every", type=int, default=8, dest="checkpoint_every", help="online rounds (default 8)"),
            arg("--grpo-lr", type=float, default=None, dest="grpo_lr", help="GRPO arms' lr (default: DPO's)"),
            arg("--arms", default=None, help="comma list of arms to run (default all: " + ", ".join(ONLINE_ARMS) + ")"),
            arg("--generator", default="assets/tiny-generator", help="the pretrained generator (default the asset)"),
            arg("--reward", default=None, help="VideoReward judge (default: a tiny one trained once, as the demo)"),
            arg("overrides", nargs="*", help="train-online key=value overrides for the online arms"),
        ),
        epilog=EPILOG_OVERRIDES,
        print_json=True,
    ),
    "serve": Bench(
        "serve",
        "run_serve_bench",
        "load test of the reward app: @serve.batch vs batch 1, then an autoscaling burst",
        "Local deployment on loopback, SynthPref uploads: throughput, p50/p95/p99, non-2xx (batched vs unbatched, "
        "one replica), then a burst that scales replicas up and its recovery. Writes JSON.",
        (
            OUT_JSON,
            CHECKPOINT,
            arg("--requests", type=int, default=96),
            arg("--concurrency", type=int, default=8),
            arg("--batch", type=int, default=8, help="most videos per batched forward pass (default 8)"),
            arg("--batch-wait-s", type=float, default=0.02, dest="batch_wait_s"),
            arg("--max-replicas", type=int, default=2, dest="max_replicas"),
            arg("--target-ongoing", type=float, default=2.0, dest="target_ongoing"),
            arg("--burst-concurrency", type=int, default=24, dest="burst_concurrency"),
            arg("--burst-s", type=float, default=20.0, dest="burst_s"),
            arg("--downscale-delay-s", type=float, default=5.0, dest="downscale_delay_s"),
            arg("--recovery-timeout-s", type=float, default=90.0, dest="recovery_timeout_s"),
            arg("--num-cpus", type=int, default=None, dest="num_cpus"),
            arg(
                "--soak-minutes",
                type=float,
                default=0.0,
                dest="soak_minutes",
                help="then this many minutes at the nominal load: non-2xx, p99 and replica RSS per minute (default 0)",
            ),
            arg(
                "--fuzz-requests",
                type=int,
                default=0,
                dest="fuzz_requests",
                help="then this many hostile requests on loopback; every one must be a 4xx or a closed connection",
            ),
        ),
    ),
    "nrg": Bench(
        "nrg",
        "run_nrg_bench",
        "Flow-NRG Table 5 in miniature: guided vs unguided win rates (reward model + oracle), clean-latent "
        "ablation, guidance cost vs pixel-space guidance; seeds, λ sweep, 95%% intervals",
        "Guided and unguided samples from the same noise for each weight vector, judged by the pixel VideoReward "
        "and the SynthPref oracle side by side; the same with a clean-latent reward (ablation); sampling time "
        "guided/unguided and pixel-space guidance. Writes OUT/nrg.json, OUT/nrg.md (verdict per claim) and per seed "
        "OUT/s<seed>/ (its report and grid.gif); rerun the same command to resume.",
        (
            OUT_DIR,
            arg("--generator", required=True, help="WanPipeline folder (e.g. gen-out/flow/final)"),
            arg("--latent-reward", required=True, dest="latent_reward", help="noise-aware latent reward"),
            arg("--clean-latent-reward", dest="clean_latent_reward", help="latent reward trained on t = 0 only"),
            arg("--reward", required=True, help="pixel VideoReward checkpoint (the judge)"),
            arg("--prompts", default="48", help="seeded SynthPref prompts per seed, or a file (default 48)"),
            arg(
                "--weights",
                nargs="+",
                default=NRG_WEIGHTS,
                help=f"weight mappings, one per guided run (default {' '.join(NRG_WEIGHTS)})",
            ),
            arg("--strength", default="1", help="λ, or a comma list for a sweep, e.g. 0.5,1,2,4 (default 1)"),
            arg("--steps", type=int, default=20),
            arg("--cfg-scale", type=float, default=4.0, dest="cfg_scale"),
            *CLIP,
            arg("--seeds", default="0", help="comma list of seeds: prompts and noise per seed (default 0)"),
            arg(
                "--cost-prompts",
                type=int,
                default=4,
                dest="cost_prompts",
                help="prompts for the cost comparison (default 4)",
            ),
            arg("--hacking-margin", type=float, default=0.05, dest="hacking_margin"),
        ),
    ),
    "gpu": Bench(
        "gpu",
        "run",
        "the GPU path at real sizes (Qwen2-VL-2B, Wan2.1-1.3B; random weights, bf16, NCCL): s/step, throughput, "
        "peak memory of every trainable model",
        "One device, no Ray: the reward model, Flow-DPO/SFT/RWR and the Flow-NRG sampler and latent reward at the "
        "real checkpoints' shapes with random weights, in one-rank DeepSpeed ZeRO-2 engines; per batch size with "
        "and without gradient checkpointing. --size tiny runs the same code on a CPU. `python -m raypipe.bench.gpu` "
        "is the same where Ray is not installed.",
        (
            OUT_JSON,
            arg(
                "--size",
                choices=["real", "tiny"],
                default=None,
                help="model shapes: real (Qwen2-VL-2B, Wan2.1-1.3B; needs a GPU) or tiny (default: real on a GPU, tiny "
                "otherwise)",
            ),
            arg("--parts", default=",".join(GPU_PARTS), help=f"comma list of {', '.join(GPU_PARTS)} (default: all)"),
            arg(
                "--family",
                default="wan21-1.3b",
                help=f"comma list of generators for the flow part, each run in turn: {', '.join(GPU_FAMILIES)} "
                "(default wan21-1.3b; real shapes, or each one's tiny config with --size tiny); nrg runs on "
                "wan21-1.3b",
            ),
            arg("--steps", type=int, default=3, help="timed steps per setting, after --warmup (default 3)"),
            arg("--warmup", type=int, default=2, help="untimed steps first (default 2)"),
            arg(
                "--reward-batches",
                default="1,2,4,8",
                dest="reward_batches",
                help="pairs per step to try for the reward model (default 1,2,4,8)",
            ),
            arg(
                "--flow-batches",
                default="1,2,4",
                dest="flow_batches",
                help="pairs (DPO) per step to try for the generator (default 1,2,4; SFT/RWR use 2x videos)",
            ),
            arg("--nrg-steps", type=int, default=4, dest="nrg_steps", help="denoising steps timed (default 4)"),
            arg(
                "--reward-conventions",
                choices=["raypipe", "videoalign"],
                default="raypipe",
                dest="reward_conventions",
                help="reward inputs: ours, or the released VideoReward's (chat template + instruction text, 1-D "
                "positions; the text from --template-file / $RAYPIPE_VIDEOALIGN_TEMPLATE, else a stand-in of the "
                "same length)",
            ),
            arg("--template-file", dest="template_file", help="the official prompt_template.py (videoalign)"),
        ),
        print_json=False,
    ),  # `python -m raypipe.bench.gpu` reads these arguments from here too
}


def bench_args(name: str, argv: list[str]) -> argparse.Namespace:
    """The arguments `raypipe bench NAME ARGV...` would get (a bench composing other benches uses this)."""
    bench = BENCHES[name]
    p = argparse.ArgumentParser(prog=f"raypipe bench {name}")
    for flags, kwargs in bench.args:
        p.add_argument(*flags, **kwargs)
    return p.parse_args(argv)


def add_bench(sub) -> None:
    """`raypipe bench BENCH`: one sub-parser per entry of `BENCHES`."""
    p = sub.add_parser("bench", help="benchmarks (JSON out, ratios against a baseline measured in the same run)")
    bsub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, bench in BENCHES.items():
        b = bsub.add_parser(name, help=bench.help, description=bench.description, epilog=bench.epilog)
        for flags, kwargs in bench.args:
            b.add_argument(*flags, **kwargs)
        b.set_defaults(func=_runner(bench))


def _runner(bench: Bench):
    """A handler that imports raypipe.bench.<module> only when that benchmark runs (and prints its JSON)."""

    def run(args) -> int:
        # a benchmark's log is read afterwards: loading bars for each model it loads say nothing there
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        result = getattr(importlib.import_module(f"raypipe.bench.{bench.module}"), bench.function)(args)
        if bench.print_json:
            print(json.dumps(result, indent=2, default=str))
        return 0

    return run
