"""The `raypipe` command: a table of jobs. Adding a job = its recipe module + one line in `JOBS`.

Every job takes `--config FILE.yaml`, `--out DIR` (= the `out` key) and any number of `key=value` overrides
(`data.sampling.fps=4`; `--key VALUE` is the same, `--checkpoint` naming `reward`); `raypipe JOB --help` lists
every key with its default and meaning, read from the recipe's config dataclass. The resolved config is written
next to the outputs. Any config error (unknown key, wrong type, missing value, bad input manifest) exits 2 with
one line naming it. `jobs/<job>.py` calls the same code as a Ray job entrypoint.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys

from raypipe import __version__
from raypipe.config import EPILOG_OVERRIDES

# command -> (recipe module under raypipe.recipes, its config class, one line of help). Each module has `run(cfg)`;
# a module-level DEFAULT_CONFIG is the config file used when no --config is given.
JOBS: dict[str, tuple[str, str, str]] = {
    "synth": ("synth", "SynthJobConfig", "write a SynthPref set: H.264 mp4 pairs + manifest.parquet"),
    "pairs": ("pairs", "PairsJobConfig", "decode a preference manifest through the Ray Data pair pipeline"),
    "train-reward": ("train_reward", "RewardTrainConfig", "train VideoReward on Ray Train + DeepSpeed (BT/BTT)"),
    "eval-reward": ("eval_reward", "EvalConfig", "accuracy of a reward checkpoint on a labelled preference manifest"),
    "export-reward": (
        "export_reward",
        "ExportConfig",
        "write a reward checkpoint in the released VideoAlign layout (or ours, from either)",
    ),
    "train-critic": (
        "train_critic",
        "CriticTrainConfig",
        "LiFT: train the generative critic (ratings with reasons) on Ray Train + DeepSpeed",
    ),
    "relabel": ("relabel", "RelabelConfig", "score videos / pairs with a reward checkpoint (Ray Data, resumable)"),
    "train-flow": ("train_flow", "FlowTrainConfig", "align the generator: pretrain / SFT / Flow-DPO / Flow-RWR (LoRA)"),
    "train-online": (
        "train_online",
        "OnlineConfig",
        "online alignment: rollout actors, a reward pool and a learner group (Flow-GRPO / online Flow-DPO)",
    ),
    "pretrain-generator": (
        "pretrain_generator",
        "GeneratorPretrainConfig",
        "make the tiny generator: fit its VAE, flow-matching pretraining, oracle report",
    ),
    "pretrain-reward-backbone": (
        "pretrain_reward_backbone",
        "CaptionPretrainConfig",
        "make the tiny reward backbone: caption-pretrain a tiny Qwen2-VL",
    ),
    "eval-flow": ("eval_flow", "FlowEvalConfig", "win rate of an aligned generator over its base (reward + oracle)"),
    "train-latent-reward": (
        "train_latent_reward",
        "LatentRewardConfig",
        "Flow-NRG: train the noise-aware latent reward model (Ray Train + DeepSpeed)",
    ),
    "generate": ("generate", "GenerateConfig", "Flow-NRG: sample videos with reward guidance (per-dimension weights)"),
    "sample-pairs": (
        "sample_pairs",
        "SamplePairsConfig",
        "pairs from the generator's own samples: K per prompt, judged by the reward model",
    ),
    "demo": ("demo", "DemoConfig", "the end-to-end story on a local Ray with the tiny models"),
}


def recipe(command: str):
    """(recipe module, config class) of a job command; imported only when that job runs or shows its help."""
    module_name, cls_name, _ = JOBS[command]
    module = importlib.import_module(f"raypipe.recipes.{module_name}")
    return module, getattr(module, cls_name)


class _JobHelp(argparse.Action):
    """`-h/--help` of a job: the usage, then every config key (imports the recipe only now)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from raypipe.config import config_help

        module, cls = recipe(parser.prog.split()[-1])
        parser.print_help()
        header = (module.__doc__ or "").strip()
        print(f"\n{header}\n" if header else "")
        print(f"config keys (key = default  # meaning) of {cls.__name__}:")
        print(config_help(cls))
        parser.exit()


def _add_job(sub, command: str, help_text: str) -> None:
    p = sub.add_parser(command, help=help_text, description=help_text, add_help=False, epilog=EPILOG_OVERRIDES)
    p.add_argument("-h", "--help", action=_JobHelp, help="show this help and every config key with its default")
    p.add_argument("--config", help="YAML file with the job's config keys (configs/ has presets)")
    p.add_argument("--out", help="output folder (= out)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=1e-4")
    p.set_defaults(func=_run_job)


def _run_job(args) -> int:
    from raypipe.config import load_config

    module, cls = recipe(args.command)
    default = getattr(module, "DEFAULT_CONFIG", None)  # a preset in the checkout (absent from a plain install)
    path = args.config or (default if default is not None and default.exists() else None)
    extra = [f"out={json.dumps(args.out)}"] if args.out else []
    module.run(load_config(cls, path, [*args.overrides, *extra]))
    return 0


# --- commands that are not config-driven jobs --------------------------------------------------------------
def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _add_probe(sub):
    p = sub.add_parser(
        "probe",
        help="print how a video would be sampled (SPEC §2.3) as JSON",
        description="Read a video's header and frame index and print the sampling plan as JSON: "
        "fps, total_frames, the frame indices, and the output height/width after "
        'resizing. On failure prints {"error": KIND, "message": ...} and exits 1.',
    )
    p.add_argument("video", help="path or URI (file://, s3://, ...)")
    p.add_argument("--fps", type=float, default=2.0, help="frames sampled per second of video (default 2)")
    p.add_argument("--max-pixels", type=int, default=448 * 448, help="pixel budget per frame (default 448*448)")
    p.add_argument("--min-pixels", type=int, default=56 * 56, help="minimum pixels per frame (default 56*56)")
    p.add_argument("--min-frames", type=int, default=4, help="fewer sampled frames: too_short (default 4)")
    p.add_argument("--max-frames", type=int, default=64, help="cap on sampled frames (default 64)")
    p.add_argument(
        "--convention",
        choices=("raypipe", "qwen"),
        default="raypipe",
        help="raypipe (SPEC §2.3) or qwen (qwen-vl-utils 0.0.8, the released VideoReward's)",
    )
    p.add_argument("--reward", help="use this reward checkpoint's sampling instead (either layout)")
    p.set_defaults(func=_run_probe)


def _run_probe(args) -> int:
    from raypipe.config import SamplingConfig
    from raypipe.video.decode import VideoError, probe_video

    sampling = SamplingConfig(
        fps=args.fps,
        min_frames=args.min_frames,
        max_frames=args.max_frames,
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        convention=args.convention,
    )
    if args.reward:
        from raypipe.reward.scoring import resolve_sampling

        sampling, _ = resolve_sampling(args.reward, None)
    info = probe_video(args.video, sampling)
    if isinstance(info, VideoError):
        _print_json({"error": info.kind, "message": info.message})
        return 1
    _print_json(
        {
            "fps": info.fps,
            "total_frames": info.total_frames,
            "indices": info.indices,
            "height": info.height,
            "width": info.width,
            "source_height": info.source_height,
            "source_width": info.source_width,
            "codec": info.codec,
        }
    )
    return 0


def _add_oracle(sub):
    p = sub.add_parser(
        "oracle",
        help="the SynthPref oracle's VQ/MQ/TA judgement of a video",
        description="Score any video from its pixels on VQ (noise/blur), MQ (track smoothness, "
        "frozen frames) and TA (colour, shape, direction vs the prompt). JSON out.",
    )
    p.add_argument("video")
    p.add_argument("--prompt", required=True, help='e.g. "a red circle moving left"')
    p.set_defaults(func=_run_oracle)


def _run_oracle(args) -> int:
    from raypipe.video.oracle import judge_video

    result = judge_video(args.video, args.prompt)
    _print_json(result)
    return 1 if "error" in result else 0


def _add_serve(sub):
    from raypipe.serve.run import add_serve_commands

    add_serve_commands(sub)


def _add_bench(sub):
    from raypipe.bench.cli import add_bench

    add_bench(sub)


# `--checkpoint X` is the released tools' word for our `reward` key; the job parser's own options stay options.
OPTION_ALIASES = {"checkpoint": "reward"}
JOB_OPTIONS = ("config", "out", "help")
_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")  # a `key=value` after a bare `--flag` stays an override


def option_overrides(extra: list[str]) -> list[str]:
    """`--key VALUE` / `--key=VALUE` after a job command is the override `key=VALUE` (dashes -> underscores,
    `--checkpoint` -> `reward`); anything else is returned unchanged for the caller to judge."""
    out, i = [], 0
    while i < len(extra):
        item = extra[i]
        if item.startswith("--") and len(item) > 2 and item[2:].partition("=")[0] not in JOB_OPTIONS:
            name, eq, value = item[2:].partition("=")
            nxt = extra[i + 1] if i + 1 < len(extra) else None
            if not eq and nxt is not None and not nxt.startswith("--") and not _OVERRIDE.match(nxt):
                value, eq, i = extra[i + 1], "=", i + 1
            if eq:
                name = name.replace("-", "_")
                item = f"{OPTION_ALIASES.get(name, name)}={value}"
        out.append(item)
        i += 1
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raypipe",
        description="Ray-native alignment of text-to-video flow models with human feedback. "
        "Every subcommand has --help; jobs list their config keys there.",
    )
    parser.add_argument("--version", action="version", version=f"raypipe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_probe(sub)
    _add_oracle(sub)
    for command, (_, _, help_text) in JOBS.items():
        _add_job(sub, command, help_text)
    _add_serve(sub)
    _add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from raypipe.config import ConfigError
    from raypipe.data.location import LocationError, full_disk
    from raypipe.data.manifest import ManifestError

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in JOBS:
        argv = [argv[0], *option_overrides(argv[1:])]
    args, extra = parser.parse_known_args(argv)
    if extra:  # `key=value` overrides after an option (`... --out DIR a=1 b=2`) belong to the job
        stray = [e for e in extra if e.startswith("-") or "=" not in e]
        if stray or args.command not in JOBS:
            parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.func(args) or 0)
    except (ConfigError, ManifestError, FileNotFoundError) as e:
        print(f"raypipe {args.command}: error: {e}", file=sys.stderr)
        return 2
    except LocationError as e:  # an output store that failed mid-run: what was written stays, rerun to resume
        print(f"raypipe {args.command}: storage error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk met by a plain file write (curves, reports): one line, not a traceback
        full = full_disk(e, getattr(e, "filename", None) or "output")
        if full is None:
            raise
        print(f"raypipe {args.command}: storage error: {full}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
