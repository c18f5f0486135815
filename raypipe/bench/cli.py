"""The `raypipe bench` sub-parsers (the benchmarks live beside this file, one module each)."""
from __future__ import annotations

import json

from raypipe.config import EPILOG_OVERRIDES


def add_bench(sub):
    """`raypipe bench BENCH`: one sub-parser per benchmark; each imports its module only when it runs."""
    p = sub.add_parser("bench", help="benchmarks (JSON out, ratios against a baseline measured in the same run)")
    bsub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    d = bsub.add_parser("decode", help="pairs/s: tight decord loop vs our Ray Data pipeline vs read_videos",
                        description="On SynthPref clips of realistic size, measure in one run (a) a single-process "
                                    "decord get_batch loop, (b) the Ray Data pair pipeline, (c) "
                                    "ray.data.read_videos keeping the same frames. Writes JSON.")
    d.add_argument("--out", required=True, help="JSON output path")
    d.add_argument("--pairs", type=int, default=24, help="pairs to decode (default 24)")
    d.add_argument("--seconds", type=float, default=5.0, help="clip length (default 5 s)")
    d.add_argument("--video-fps", type=float, default=24.0, help="clip frame rate (default 24)")
    d.add_argument("--size", default="360x640", help="clip HxW (default 360x640)")
    d.add_argument("--fps", type=float, default=2.0, help="sampling fps (default 2)")
    d.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    d.add_argument("--rows-per-block", type=int, default=1, help="pairs per decode task in (b) (default 1)")
    d.add_argument("--data-dir", default=None, help="where to write the clips (default: OUT's folder)")
    d.set_defaults(func=_bench_runner("decode", "run_decode_bench"))
    r = bsub.add_parser("reward-ablation", help="Table 6 in miniature: regression / BT / BTT / BTT last-token",
                        description="Train each reward variant with the same data and budget on SynthPref (with "
                                    "ties) and write ablation.json + ablation.md (accuracy with/without ties).",
                        epilog=EPILOG_OVERRIDES)
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--config", default="configs/reward_tiny.yaml", help="base config (default reward_tiny)")
    r.add_argument("--pairs", type=int, default=2048, help="training pairs (default 2048)")
    r.add_argument("--val-pairs", type=int, default=256, dest="val_pairs", help="held-out pairs (default 256)")
    r.add_argument("--steps", type=int, default=150, help="optimizer steps per variant (default 150)")
    r.add_argument("--epochs", type=int, default=2)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--variants", default=None, help="comma list (default: regression,bt,btt,btt_last_token)")
    r.add_argument("overrides", nargs="*", help="key=value overrides applied to every variant")
    r.set_defaults(func=_bench_runner("reward_ablation", "run_reward_ablation"))
    rt = bsub.add_parser("reward-throughput", help="train-reward pairs/s per worker and data wait: streamed vs "
                                                   "cached frames, ZeRO-2 vs ZeRO-0",
                         description="Train the same config for the same steps on the same SynthPref pairs with "
                                     "(a) frames decoded every epoch, (b) decoded once into the object store "
                                     "(data.cache_frames), (c) the cache with ZeRO-0; writes JSON with pairs/s per "
                                     "worker, the data-wait share and ratios against (a).",
                         epilog=EPILOG_OVERRIDES)
    rt.add_argument("--out", required=True, help="JSON output path (work files go beside it)")
    rt.add_argument("--config", default="configs/reward_tiny.yaml", help="base config (default reward_tiny)")
    rt.add_argument("--pairs", type=int, default=1024, help="training pairs (default 1024)")
    rt.add_argument("--steps", type=int, default=240, help="optimizer steps per setting (default 240)")
    rt.add_argument("--seed", type=int, default=0)
    rt.add_argument("--settings", default=None, help="comma list (default: stream_zero2,cache_zero2,cache_zero0)")
    rt.add_argument("overrides", nargs="*", help="key=value overrides applied to every setting")
    rt.set_defaults(func=_bench_runner("reward_throughput", "run_reward_throughput"))
    rl = bsub.add_parser("relabel", help="videos/s: reference decode-8-score-8 loop vs relabel with 1 and 2 actors",
                         description="On the same SynthPref videos and tiny checkpoint, measure in one run (a) a "
                                     "single-process decode-a-batch-then-score loop like the public reference "
                                     "code, (b) raypipe relabel with 1 scoring actor, (c) with 2. Writes JSON.")
    rl.add_argument("--out", required=True, help="JSON output path")
    rl.add_argument("--pairs", type=int, default=1024, help="SynthPref pairs (videos = 2x; default 1024)")
    rl.add_argument("--seed", type=int, default=7)
    rl.add_argument("--batch-size", type=int, default=32, dest="batch_size",
                    help="most videos per forward pass in (b)/(c) (default 32; (a) always takes 8)")
    rl.add_argument("--decode-rows", type=int, default=32, dest="decode_rows",
                    help="most videos per decode task in (b)/(c) (default 32)")
    rl.add_argument("--checkpoint", default=None, help="reward checkpoint (default: an untrained tiny one)")
    rl.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    rl.set_defaults(func=_bench_runner("relabel", "run_relabel_bench"))
    fm = bsub.add_parser("flow-memory", help="peak memory / step time: Flow-DPO vs SFT vs DPO with a reference copy",
                         description="Each variant in a fresh process on a Wan2.1-shaped transformer with LoRA: SFT "
                                     "on 2P videos, Flow-DPO on P pairs with the disabled-adapter reference, and "
                                     "Flow-DPO with a separate reference copy. Writes JSON.")
    fm.add_argument("--out", required=True, help="JSON output path")
    fm.add_argument("--size", choices=["small", "medium"], default="medium", help="transformer size (default medium)")
    fm.add_argument("--pairs", type=int, default=2, help="pairs per step (default 2 = 4 videos)")
    fm.add_argument("--steps", type=int, default=5, help="timed steps after 2 warm-up steps (default 5)")
    fm.set_defaults(func=_bench_runner("flow_memory", "run_flow_memory_bench"))
    fa = bsub.add_parser("flow-alignment", help="Table 3 in miniature: SFT / Flow-RWR / Flow-DPO β_t / Flow-DPO "
                                                "constant β win rates over the pretrained generator",
                         description="Train each variant with the same LoRA, lr, steps and seed on one pair set, "
                                     "then eval-flow each against the pretrained generator (reward model + oracle "
                                     "win rates). Writes OUT/flow_alignment.json and .md.", epilog=EPILOG_OVERRIDES)
    fa.add_argument("--out", required=True, help="output folder")
    fa.add_argument("--generator", required=True, help="pretrained WanPipeline folder (e.g. gen-out/flow/final)")
    fa.add_argument("--reward", required=True, help="VideoReward checkpoint (the judge)")
    fa.add_argument("--pairs", required=True, help="relabel-shaped pairs (e.g. sample-pairs OUT/pairs)")
    fa.add_argument("--weights", default="VQ=1", help="dimensions the pairs target (default VQ=1)")
    fa.add_argument("--config", default="configs/flow_tiny.yaml", help="base train-flow config")
    fa.add_argument("--variants", default=None, help="comma list (default sft,rwr,dpo_beta_t,dpo)")
    fa.add_argument("--steps", type=int, default=200, help="optimizer steps per variant (default 200)")
    fa.add_argument("--prompts", default="48", help="eval prompts (default 48)")
    fa.add_argument("--frames", type=int, default=9)
    fa.add_argument("--height", type=int, default=32)
    fa.add_argument("--width", type=int, default=32)
    fa.add_argument("--seed", type=int, default=0)
    fa.add_argument("overrides", nargs="*", help="train-flow key=value overrides for every variant")
    fa.set_defaults(func=_bench_runner("flow_alignment", "run_flow_alignment_bench"))
    sv = bsub.add_parser("serve", help="load test of the reward app: @serve.batch vs batch 1, then an autoscaling "
                                       "burst", description="Local deployment on loopback, SynthPref uploads: "
                                                            "throughput, p50/p95/p99, non-2xx (batched vs "
                                                            "unbatched, one replica), then a burst that scales "
                                                            "replicas up and its recovery. Writes JSON.")
    sv.add_argument("--out", required=True, help="JSON output path")
    sv.add_argument("--checkpoint", default=None, help="reward checkpoint (default: an untrained tiny one)")
    sv.add_argument("--requests", type=int, default=96)
    sv.add_argument("--concurrency", type=int, default=8)
    sv.add_argument("--batch-size", type=int, default=8, dest="batch_size")
    sv.add_argument("--batch-wait-s", type=float, default=0.02, dest="batch_wait_s")
    sv.add_argument("--max-replicas", type=int, default=2, dest="max_replicas")
    sv.add_argument("--target-ongoing", type=float, default=2.0, dest="target_ongoing")
    sv.add_argument("--burst-concurrency", type=int, default=24, dest="burst_concurrency")
    sv.add_argument("--burst-s", type=float, default=20.0, dest="burst_s")
    sv.add_argument("--downscale-delay-s", type=float, default=5.0, dest="downscale_delay_s")
    sv.add_argument("--recovery-timeout-s", type=float, default=90.0, dest="recovery_timeout_s")
    sv.add_argument("--num-cpus", type=int, default=None, dest="num_cpus")
    sv.set_defaults(func=_bench_runner("serve", "run_serve_bench"))
    nb = bsub.add_parser("nrg", help="Flow-NRG Table 5 in miniature: guided vs unguided win rates (reward model + "
                                     "oracle), clean-latent ablation, guidance cost vs pixel-space guidance",
                         description="Guided and unguided samples from the same noise for each weight vector, "
                                     "judged by the pixel VideoReward and the SynthPref oracle side by side; the "
                                     "same with a clean-latent reward (ablation); sampling time guided/unguided and "
                                     "pixel-space guidance. Writes OUT/nrg.json, OUT/nrg.md, OUT/grid.gif.")
    nb.add_argument("--out", required=True, help="output folder")
    nb.add_argument("--generator", required=True, help="WanPipeline folder (e.g. gen-out/flow/final)")
    nb.add_argument("--latent-reward", required=True, dest="latent_reward", help="noise-aware latent reward")
    nb.add_argument("--clean-latent-reward", dest="clean_latent_reward", help="latent reward trained on t = 0 only")
    nb.add_argument("--reward", required=True, help="pixel VideoReward checkpoint (the judge)")
    nb.add_argument("--prompts", default="48", help="number of seeded SynthPref prompts or a file (default 48)")
    nb.add_argument("--weights", nargs="+", default=["0:0:1", ".1:.1:.8", ".5:.5:0"],
                    help="VQ:MQ:TA weight vectors (default 0:0:1 .1:.1:.8 .5:.5:0)")
    nb.add_argument("--strength", type=float, default=1.0, help="λ (default 1)")
    nb.add_argument("--steps", type=int, default=20)
    nb.add_argument("--cfg-scale", type=float, default=4.0, dest="cfg_scale")
    nb.add_argument("--frames", type=int, default=9)
    nb.add_argument("--height", type=int, default=32)
    nb.add_argument("--width", type=int, default=32)
    nb.add_argument("--seed", type=int, default=0)
    nb.add_argument("--cost-prompts", type=int, default=4, dest="cost_prompts",
                    help="prompts for the cost comparison (default 4)")
    nb.add_argument("--hacking-margin", type=float, default=0.05, dest="hacking_margin")
    nb.set_defaults(func=_bench_runner("nrg", "run_nrg_bench"))

    from raypipe.bench.gpu import add_arguments as gpu_arguments

    gp = bsub.add_parser("gpu", help="the GPU path at real sizes (Qwen2-VL-2B, Wan2.1-1.3B; random weights, bf16, "
                                     "NCCL): s/step, throughput, peak memory of every trainable model",
                         description="One device, no Ray: the reward model, Flow-DPO/SFT/RWR and the Flow-NRG "
                                     "sampler and latent reward at the real checkpoints' shapes with random weights, "
                                     "in one-rank DeepSpeed ZeRO-2 engines; per batch size with and without "
                                     "gradient checkpointing. --size tiny runs the same code on a CPU. "
                                     "`python -m raypipe.bench.gpu` is the same where Ray is not installed.")
    gpu_arguments(gp)
    gp.set_defaults(func=_gpu_runner)


def _gpu_runner(args) -> int:
    from raypipe.bench.gpu import run

    run(args)  # prints its own table; the JSON is at --out
    return 0


def _bench_runner(module: str, function: str):
    """A handler that imports raypipe.bench.<module> only when that benchmark runs, and prints its JSON."""
    def run(args) -> int:
        import importlib

        result = getattr(importlib.import_module(f"raypipe.bench.{module}"), function)(args)
        print(json.dumps(result, indent=2, default=str))
        return 0

    return run
