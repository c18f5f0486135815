"""The `raypipe` command. Each subcommand is one job function; `jobs/<job>.py` calls the same code.

Config-driven jobs take `--config FILE.yaml` and any number of `key=value` overrides
(`data.sampling.fps=4`); the resolved config is written next to the outputs.
"""
from __future__ import annotations

import argparse
import json
import sys

from raypipe import __version__
from raypipe.bench.cli import add_bench
from raypipe.config import EPILOG_OVERRIDES

def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


# --- probe -------------------------------------------------------------------------------------------------
def _add_probe(sub):
    p = sub.add_parser("probe", help="print how a video would be sampled (SPEC §2.3) as JSON",
                       description="Read a video's header and frame index and print the sampling plan as JSON: "
                                   "fps, total_frames, the frame indices, and the output height/width after "
                                   "resizing. On failure prints {\"error\": KIND, \"message\": ...} and exits 1.")
    p.add_argument("video", help="path or URI (file://, s3://, ...)")
    p.add_argument("--fps", type=float, default=2.0, help="frames sampled per second of video (default 2)")
    p.add_argument("--max-pixels", type=int, default=448 * 448, help="pixel budget per frame (default 448*448)")
    p.add_argument("--min-pixels", type=int, default=56 * 56, help="minimum pixels per frame (default 56*56)")
    p.add_argument("--min-frames", type=int, default=4, help="fewer sampled frames: too_short (default 4)")
    p.add_argument("--max-frames", type=int, default=64, help="cap on sampled frames (default 64)")
    p.set_defaults(func=_run_probe)


def _run_probe(args) -> int:
    from raypipe.config import SamplingConfig
    from raypipe.video.decode import VideoError, probe_video

    sampling = SamplingConfig(fps=args.fps, min_frames=args.min_frames, max_frames=args.max_frames,
                              min_pixels=args.min_pixels, max_pixels=args.max_pixels)
    info = probe_video(args.video, sampling)
    if isinstance(info, VideoError):
        _print_json({"error": info.kind, "message": info.message})
        return 1
    _print_json({"fps": info.fps, "total_frames": info.total_frames, "indices": info.indices,
                 "height": info.height, "width": info.width, "source_height": info.source_height,
                 "source_width": info.source_width, "codec": info.codec})
    return 0


# --- synth -------------------------------------------------------------------------------------------------
def _add_synth(sub):
    p = sub.add_parser("synth", help="write a SynthPref set: H.264 mp4 pairs + manifest.parquet",
                       description="Synthesise preference pairs with known ground truth (DESIGN.md, SynthPref). "
                                   "Defaults are the reference difficulty.", epilog=EPILOG_OVERRIDES)
    p.add_argument("--out", required=True, help="output folder (videos/ and manifest.parquet)")
    p.add_argument("--config", help="YAML with SynthConfig fields")
    p.add_argument("--pairs", type=int, help="number of pairs (default 256)")
    p.add_argument("--seed", type=int, help="random seed (default 0); same seed, same data")
    p.add_argument("--frames", type=int, help="frames per video (default 16)")
    p.add_argument("--size", help="HxW (default 56x56)")
    p.add_argument("--fps", type=float, help="video frame rate (default 8)")
    p.add_argument("--label-noise", type=float, dest="label_noise", help="share of labels flipped (default 0)")
    p.add_argument("--tie-margin", type=float, dest="tie_margin", help="VQ/MQ tie margin (default 0.16)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=_run_synth)


def _flag_overrides(args, names) -> list[str]:
    return [f"{n}={json.dumps(getattr(args, n))}" for n in names if getattr(args, n, None) is not None]


def _run_synth(args) -> int:
    from raypipe.config import SynthConfig, load_config, save_config
    from raypipe.video.synth import make_synthpref

    names = ("pairs", "seed", "frames", "size", "fps", "label_noise", "tie_margin")
    cfg = load_config(SynthConfig, args.config, list(args.overrides) + _flag_overrides(args, names))
    table = make_synthpref(args.out, cfg, progress=True)
    save_config(cfg, args.out)
    from raypipe.data.manifest import label_shares

    _print_json({"out": args.out, "pairs": table.num_rows, "videos": 2 * table.num_rows,
                 "label_shares": label_shares(table, ("VQ", "MQ", "TA"))})
    return 0


# --- oracle ------------------------------------------------------------------------------------------------
def _add_oracle(sub):
    p = sub.add_parser("oracle", help="the SynthPref oracle's VQ/MQ/TA judgement of a video",
                       description="Score any video from its pixels on VQ (noise/blur), MQ (track smoothness, "
                                   "frozen frames) and TA (colour, shape, direction vs the prompt). JSON out.")
    p.add_argument("video")
    p.add_argument("--prompt", required=True, help='e.g. "a red circle moving left"')
    p.set_defaults(func=_run_oracle)


def _run_oracle(args) -> int:
    from raypipe.video.oracle import judge_video

    result = judge_video(args.video, args.prompt)
    _print_json(result)
    return 1 if "error" in result else 0


# --- pairs -------------------------------------------------------------------------------------------------
def _add_pairs(sub):
    p = sub.add_parser("pairs", help="decode a preference manifest through the Ray Data pair pipeline",
                       description="Validate a manifest, decode both videos of every pair on Ray, and write "
                                   "decoded.parquet, errors.parquet and summary.json to --out.",
                       epilog=EPILOG_OVERRIDES)
    p.add_argument("--manifest", help="preference manifest (.parquet or .csv); = data.manifest")
    p.add_argument("--out", help="output folder; = out")
    p.add_argument("--config", help="YAML with PairsJobConfig fields (e.g. configs/pairs_tiny.yaml)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=_run_pairs)


def _run_pairs(args) -> int:
    from raypipe.config import load_config
    from raypipe.data.pairs_job import PairsJobConfig, run_pairs_job

    extra = []
    if args.manifest:
        extra.append(f"data.manifest={json.dumps(args.manifest)}")
    if args.out:
        extra.append(f"out={json.dumps(args.out)}")
    if args.address:
        extra.append(f"address={json.dumps(args.address)}")
    cfg = load_config(PairsJobConfig, args.config, list(args.overrides) + extra)
    _print_json(run_pairs_job(cfg))
    return 0


# --- demo --------------------------------------------------------------------------------------------------
def _add_demo(sub):
    p = sub.add_parser("demo", help="the end-to-end story on a local Ray with the tiny models",
                       description="SynthPref -> Ray Data pairs -> train + evaluate VideoReward -> relabel -> pairs "
                                   "from the tiny pretrained generator's samples -> Flow-DPO + win rates -> Flow-NRG "
                                   "latent reward + guided sampling; prints a summary.", epilog=EPILOG_OVERRIDES)
    p.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    p.add_argument("--from-scratch", action="store_true", dest="from_scratch",
                   help="remake the tiny generator (pretrain-generator, ~25 min) instead of the repo asset")
    p.add_argument("--config", default=None, help="YAML with DemoConfig fields (default configs/demo_tiny.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from raypipe.demo import run_demo_from_args

    return run_demo_from_args(args.config, args.out, [*args.overrides, *(["from_scratch=true"] if args.from_scratch
                                                                         else [])])


# --- train-reward / eval-reward -------------------------------------------------------------------------------
def _add_train_reward(sub):
    p = sub.add_parser("train-reward", help="train VideoReward on Ray Train + DeepSpeed (BT/BTT, LoRA)",
                       description="Train the multi-dimensional video reward model. With no data.manifest the "
                                   "tiny preset synthesises its own seeded SynthPref data. The loadable final "
                                   "checkpoint lands in OUT/final.", epilog=EPILOG_OVERRIDES)
    p.add_argument("--config", help="YAML (e.g. configs/reward_tiny.yaml, configs/reward_qwen2vl_2b.yaml)")
    p.add_argument("--out", help="output folder (= out)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.zero_stage=3")
    p.set_defaults(func=_run_train_reward)


def _add_eval_reward(sub):
    p = sub.add_parser("eval-reward", help="evaluate a reward checkpoint on a preference manifest",
                       description="Score every distinct video once, write scores.parquet (every row), "
                                   "metrics.json (accuracy with/without ties per dimension) and an "
                                   "accuracy-vs-epsilon plot.", epilog=EPILOG_OVERRIDES)
    p.add_argument("--checkpoint", required=True, help="a VideoReward checkpoint folder (e.g. OUT/final)")
    p.add_argument("--manifest", required=True, help="preference manifest (.parquet or .csv)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", help="YAML with EvalConfig fields")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=_run_eval_reward)


def _run_train_reward(args) -> int:
    from raypipe.train.reward_job import train_reward_from_args

    return train_reward_from_args(args.config, args.out, args.overrides)


def _run_eval_reward(args) -> int:
    from raypipe.reward.eval_job import eval_from_args

    return eval_from_args(args.checkpoint, args.manifest, args.out, args.config, args.overrides)


# --- relabel -----------------------------------------------------------------------------------------------
def _add_relabel(sub):
    p = sub.add_parser("relabel", help="score videos / pairs with a reward checkpoint (Ray Data, resumable)",
                       description="Score a preference manifest (model labels + margins per dimension), a "
                                   "pointwise manifest, or a folder/glob of videos with a VideoReward checkpoint. "
                                   "Decoding runs in CPU tasks, scoring in a pool of actors. Killed and rerun "
                                   "with the same arguments it resumes; every input row is written exactly once "
                                   "to OUT/part-*.parquet, with bad videos as error rows.", epilog=EPILOG_OVERRIDES)
    p.add_argument("--checkpoint", required=True, help="a VideoReward checkpoint folder (e.g. OUT/final)")
    p.add_argument("--input", required=True, help="manifest (.parquet/.csv), folder of videos, or glob")
    p.add_argument("--out", required=True, help="output folder (rerun with the same one to resume)")
    p.add_argument("--config", help="YAML with RelabelConfig fields")
    p.add_argument("--batch-size", type=int, dest="batch_size", help="most videos per forward pass (default 8)")
    p.add_argument("--token-budget", type=int, dest="token_budget",
                   help="most video tokens per forward pass: dynamic batching (default: no cap)")
    p.add_argument("--concurrency", type=int, help="scoring actors (default 1)")
    p.add_argument("--num-gpus", type=float, dest="num_gpus", help="GPUs per scoring actor (default 0)")
    p.add_argument("--tie-epsilon", dest="tie_epsilon",
                   help="'same' when |margin| <= eps: a number or VQ=0.1,MQ=0.2 (default: the checkpoint's)")
    p.add_argument("--prompts", help="path,prompt sidecar for a folder/glob input")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. decode_rows=8")
    p.set_defaults(func=_run_relabel)


def _run_relabel(args) -> int:
    from raypipe.relabel.job import relabel_from_args

    flags = {k: getattr(args, k) for k in ("batch_size", "token_budget", "concurrency", "num_gpus", "tie_epsilon",
                                           "prompts")}
    return relabel_from_args(args.checkpoint, args.input, args.out, args.config, args.overrides, **flags)


# --- train-flow --------------------------------------------------------------------------------------------
def _add_train_flow(sub):
    p = sub.add_parser("train-flow", help="align the generator: pretrain / SFT / Flow-DPO / Flow-RWR (Ray Train + "
                                          "DeepSpeed, LoRA)",
                       description="Train the flow video generator on Ray Train with a DeepSpeed engine per worker. "
                                   "dpo/sft/rwr train LoRA adapters (OUT/final loads with "
                                   "WanPipeline.load_lora_weights); pretrain trains the whole transformer "
                                   "(OUT/final is a WanPipeline folder). With no data.manifest a seeded SynthPref "
                                   "set is synthesised.", epilog=EPILOG_OVERRIDES)
    p.add_argument("--algo", choices=["pretrain", "sft", "dpo", "rwr"], help="(= train.algo)")
    p.add_argument("--config", help="YAML (e.g. configs/flow_tiny.yaml)")
    p.add_argument("--out", help="output folder (= out)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.beta=500 data.weights.MQ=1")
    p.set_defaults(func=_run_train_flow)


def _run_train_flow(args) -> int:
    from raypipe.train.flow_job import train_flow_from_args

    return train_flow_from_args(args.algo, args.config, args.out, args.overrides)


def _add_eval_flow(sub):
    p = sub.add_parser("eval-flow", help="win rate of an aligned generator over its base (reward model + oracle)",
                       description="Same prompts and initial noise for base and aligned (LoRA) generator; per-"
                                   "dimension win rates by the reward model and by the SynthPref oracle, reward "
                                   "hacking flagged; OUT/report.json, OUT/grid.gif, the samples as mp4.",
                       epilog=EPILOG_OVERRIDES)
    p.add_argument("--base", required=True, help="WanPipeline folder of the pretrained generator")
    p.add_argument("--lora", required=True, help="adapter folder from train-flow (OUT/final)")
    p.add_argument("--reward", required=True, help="VideoReward checkpoint")
    p.add_argument("--prompts", help="a number of seeded SynthPref prompts (default 64), a .txt or a manifest")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", help="YAML with FlowEvalConfig fields")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. cfg_scale=3 steps=30")
    p.set_defaults(func=_run_eval_flow)


def _run_eval_flow(args) -> int:
    from raypipe.flow.eval_job import eval_flow_from_args

    return eval_flow_from_args(args.base, args.lora, args.reward, args.prompts, args.out, args.config,
                               args.overrides)


def _add_pretrain_generator(sub):
    p = sub.add_parser("pretrain-generator", help="make the tiny generator: fit its VAE, flow-matching pretraining, "
                                                  "oracle report",
                       description="SynthPref clips -> tiny WanPipeline with a fitted VAE -> train-flow --algo "
                                   "pretrain (Ray Train + DeepSpeed, latent cache, prompt dropout) -> CFG samples "
                                   "judged by the oracle (OUT/report.json).", epilog=EPILOG_OVERRIDES)
    p.add_argument("--config", help="YAML (e.g. configs/generator_tiny.yaml)")
    p.add_argument("--out", help="output folder (= out)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. vae_steps=600")
    p.set_defaults(func=_run_pretrain_generator)


def _run_pretrain_generator(args) -> int:
    from raypipe.flow.pretrain_job import pretrain_generator_from_args

    return pretrain_generator_from_args(args.config, args.out, args.overrides)


def _add_pretrain_reward_backbone(sub):
    p = sub.add_parser("pretrain-reward-backbone",
                       help="make the tiny reward backbone: caption-pretrain a tiny Qwen2-VL on SynthPref-style clips",
                       description="Next-token captioning ('a red circle moving left', true attributes) of freshly "
                                   "rendered clips, plain PyTorch on one process; the folder loads as "
                                   "model.name_or_path. The repo ships the result as assets/tiny-qwen2vl.")
    p.add_argument("--out", required=True, help="output folder (a Qwen2-VL checkpoint + pretrain_report.json)")
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget (default 10)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=32, help="clips per step (default 32)")
    p.add_argument("--pixels", type=int, default=112, help="frame side the clips are shown at (default 112)")
    p.add_argument("--init", default=None, help="continue from an earlier run's output folder")
    p.set_defaults(func=lambda a: __import__("raypipe.reward.pretrain", fromlist=["x"]).pretrain_backbone_from_args(a))


def _add_train_latent_reward(sub):
    p = sub.add_parser("train-latent-reward", help="Flow-NRG: train the noise-aware latent reward model (Ray Train + "
                                                   "DeepSpeed) from labelled or relabelled pairs",
                       description="Pairs (manifest labels or relabel's model_<DIM>) -> latent cache -> a reward "
                                   "model built from the generator's first K transformer blocks, trained on both "
                                   "latents noised with one shared eps and t (BT/BTT) -> OUT/final, held-out "
                                   "accuracy per t bucket in OUT/metrics.json.", epilog=EPILOG_OVERRIDES)
    p.add_argument("--config", help="YAML (e.g. configs/latent_reward_tiny.yaml)")
    p.add_argument("--out", help="output folder (= out)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. k_blocks=1 train.noise=clean")
    p.set_defaults(func=_run_train_latent_reward)


def _run_train_latent_reward(args) -> int:
    from raypipe.nrg.train_job import train_latent_reward_from_args

    return train_latent_reward_from_args(args.config, args.out, args.overrides)


def _add_serve(sub):
    p = sub.add_parser("serve", help="start the reward (/score) and generate (/generate) Serve apps on a local Ray",
                       description="Reads serve/config.yaml (autoscaling, batching, limits, auth env var) and "
                                   "starts its applications; CLI paths override the config's args.")
    p.add_argument("--reward-checkpoint", dest="reward_checkpoint", help="VideoReward checkpoint for /score")
    p.add_argument("--generator", help="WanPipeline folder for /generate (omit: the generate app is skipped "
                                       "unless the config's path exists)")
    p.add_argument("--latent-reward", dest="latent_reward", help="latent reward model for guidance")
    p.add_argument("--lora", help="adapters to load into the generator")
    p.add_argument("--config", help="Serve config (default serve/config.yaml)")
    p.add_argument("--port", type=int, help="HTTP port (default from the config: 8000)")
    p.add_argument("--host", help="HTTP host (default from the config: 127.0.0.1)")
    p.add_argument("--address", help="Ray address (default: a local Ray)")
    p.add_argument("--no-block", action="store_true", dest="no_block", help="return after starting (tests)")
    p.set_defaults(func=lambda a: __import__("raypipe.serve.run", fromlist=["x"]).serve_from_args(a))
    c = sub.add_parser("score", help="client: score a video with a running reward server",
                       description="POSTs VIDEO (multipart upload, or --uri to send the path for the server to "
                                   "read under its allowed roots) and PROMPT to URL/score; prints the JSON.")
    c.add_argument("video", metavar="VIDEO")
    c.add_argument("prompt", metavar="PROMPT")
    c.add_argument("--url", default="http://127.0.0.1:8000", help="server (default http://127.0.0.1:8000)")
    c.add_argument("--uri", action="store_true", help="send VIDEO as a URI instead of uploading it")
    c.add_argument("--token", default=None, help="bearer token (default: none)")
    c.add_argument("--timeout", type=float, default=120.0)
    c.set_defaults(func=lambda a: __import__("raypipe.serve.run", fromlist=["x"]).score_from_args(a))


def _add_sample_pairs(sub):
    p = sub.add_parser("sample-pairs", help="pairs from the generator's own samples: K per prompt, relabelled by the "
                                            "reward model, best vs worst",
                       description="K samples per prompt -> raypipe relabel -> per prompt the best vs the worst by "
                                   "the weighted reward -> OUT/pairs (relabel-shaped: train-flow "
                                   "data.source=margins, train-latent-reward labels=model).",
                       epilog=EPILOG_OVERRIDES)
    p.add_argument("--config", help="YAML with the same keys")
    p.add_argument("--out", help="output folder")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. generator=gen-out/flow/final "
                                                "reward=reward-out/final prompts=128 k=4 weights={MQ: 1}")
    p.set_defaults(func=lambda a: __import__("raypipe.flow.sample_pairs", fromlist=["x"]).sample_pairs_from_args(
        a.config, a.out, a.overrides))


def _add_generate(sub):
    p = sub.add_parser("generate", help="Flow-NRG: sample videos with reward guidance (per-dimension weights)",
                       description="Euler sampling with classifier-free guidance, then reward guidance "
                                   "v - λ·t/(1-t)·∇ Σ_d w_d r_d from the latent reward model at every step but the "
                                   "first. Writes OUT/videos/*.mp4 and OUT/samples.json.", epilog=EPILOG_OVERRIDES)
    p.add_argument("--generator", help="WanPipeline folder (e.g. gen-out/flow/final)")
    p.add_argument("--lora", help="adapters from train-flow (optional)")
    p.add_argument("--latent-reward", dest="latent_reward", help="latent reward model (train-latent-reward OUT/final)")
    p.add_argument("--prompts", help="a number (seeded SynthPref prompts), a .txt/manifest, or 'p1|p2'")
    p.add_argument("--weights", help="per-dimension weights, e.g. VQ=0.1,MQ=0.1,TA=0.8")
    p.add_argument("--strength", type=float, help="guidance strength λ (0: unguided)")
    p.add_argument("--seed", type=int, help="noise seed (same seed = same initial noise, guided or not)")
    p.add_argument("--steps", type=int, help="sampling steps (default 20)")
    p.add_argument("--config", help="YAML with the same keys")
    p.add_argument("--out", help="output folder")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. cfg_scale=4 frames=9")
    p.set_defaults(func=lambda args: __import__("raypipe.nrg.generate", fromlist=["x"]).generate_from_args(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raypipe",
        description="Ray-native alignment of text-to-video flow models with human feedback. "
                    "Every subcommand has --help.")
    parser.add_argument("--version", action="version", version=f"raypipe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_probe, _add_synth, _add_oracle, _add_pairs, _add_train_reward, _add_eval_reward, _add_relabel,
                _add_train_flow, _add_pretrain_generator, _add_pretrain_reward_backbone, _add_eval_flow,
                _add_train_latent_reward, _add_generate, _add_sample_pairs, _add_serve,
                _add_demo, add_bench):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from raypipe.config import ConfigError
    from raypipe.data.manifest import ManifestError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, ManifestError) as e:
        print(f"raypipe {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
