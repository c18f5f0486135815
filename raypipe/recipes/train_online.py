"""`raypipe train-online`: align the generator on its own fresh samples, round after round (SPEC §9).

    raypipe train-online --config configs/online_tiny.yaml --out online-out reward=reward-out/final
    raypipe train-online --config configs/online_tiny.yaml --out online-out reward=… train.algo=dpo

Three pools on one Ray cluster: rollout actors (the generator with the current LoRA, `rollout.actors` of them,
`rollout.num_gpus` each), reward actors (the VideoReward checkpoint, `reward_pool.actors`), and the learner —
a Ray Train + DeepSpeed group (`recipes/online_learner.py`) whose rank 0 drives each round:
1. the round's prompts (the next `train.prompts_per_round` of `prompts`, K seeds each, all from seed and round);
2. rank 0 puts its adapters in the object store once (policy version = round) and the rollout pool samples with
   them: the SDE of Flow-GRPO (noise level `train.noise_level`, every state and log-probability kept) or, for
   online DPO, the ODE sampler;
3. the reward pool scores every sample as relabel would (mp4 at `fps`, the checkpoint's sampling); r = Σ w_d·r_d
   with `weights`; a sample whose reward failed is an error, counted and never trained on;
4. every rank trains on its share: GRPO on a `train.train_fraction` of each sample's transitions (advantages within
   each prompt's group, clipped ratio `train.clip_range`, KL to the adapters-disabled reference ×
   `train.kl_beta`); online DPO on best vs worst per prompt (SPEC §5.1, reference = the base);
5. a checkpoint per round; `OUT/rounds.jsonl` gets the round's line (reward mean/std per dimension, the oracle's
   view, KL, loss, time split rollout / reward / train / sync, samples per second, the adapters' hashes).
Killed at any moment, the same command resumes at the last finished round with the same prompts, seeds and policy
version. Outputs: `OUT/final` (adapters, loadable with the pipeline's `load_lora_weights`), `OUT/rounds.jsonl`,
`OUT/summary.json`, `OUT/config.yaml`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from raypipe.config import ClipConfig, ConfigError, SynthConfig, repo_path, save_config, to_dict
from raypipe.critic.model import critic_dimensions
from raypipe.data.inputs import real_videos
from raypipe.data.location import StagedOutput
from raypipe.data.prompts import read_prompts
from raypipe.distributed.cluster import init_ray
from raypipe.distributed.trainer import TrainerSettings, fit_trainer
from raypipe.flow.families import make_tiny_generator
from raypipe.flow.wan_build import TinyWanConfig
from raypipe.nrg.model import latent_reward_dimensions
from raypipe.reward.scoring import checkpoint_dimensions
from raypipe.serve.pool import RewardPools

ALGOS = ("grpo", "dpo")


@dataclasses.dataclass
class OnlineLoraSettings:
    enabled: bool = True  # must be true: the reference of both algorithms is the model with adapters disabled
    r: int = 8  # LoRA rank
    alpha: int = 8  # LoRA alpha (scale alpha/r)
    dropout: float = 0.0  # LoRA dropout
    experts: str = "both"  # Wan2.2 A14B: both | high | low (the expert(s) that get adapters)


@dataclasses.dataclass
class OnlineTrainSettings(TrainerSettings):
    """train-online's `train` section: the shared trainer fields + the round and the algorithm."""

    algo: str = "grpo"  # grpo (Flow-GRPO) | dpo (online Flow-DPO: best vs worst of each prompt's K)
    num_workers: int = 1  # learner ranks
    cpus_per_worker: float = 0.5
    rounds: int = 4  # rounds of rollout -> reward -> update
    prompts_per_round: int = 4  # prompts sampled per round
    k: int = 4  # samples per prompt (the GRPO group / the DPO candidates)
    steps: int = 8  # sampling steps
    cfg_scale: float = 4.0  # classifier-free guidance scale (sampling and GRPO's recomputed velocities)
    noise_level: float = 0.7  # GRPO: a in σ_t = a·sqrt(t/(1−t))
    train_fraction: float = 0.5  # GRPO: share of each sample's denoising steps trained on
    clip_range: float = 0.2  # GRPO: ε of the clipped importance ratio
    adv_clip: float = 5.0  # GRPO: advantages clipped to ±this
    kl_beta: float = 0.04  # GRPO: weight of the KL to the reference (adapters disabled)
    beta: float = 500.0  # online DPO: Flow-DPO β
    beta_schedule: str = "constant"  # online DPO: constant | derived
    ref_rounds: int = 0  # online DPO: the reference is the base (0) or the policy of this many rounds ago
    # round k+1's rollouts and rewards run while round k trains: samples one policy version old (GRPO's ratio uses
    # the behaviour policy's stored log-probabilities); a resumed run samples its first round with the current one
    overlap: bool = False
    updates: int = 1  # passes over a round's samples
    # weight of plain flow matching on real videos (real_manifest / real_synth) added to every update (the paper's
    # remedy for losing what the reward does not target); 0: off
    lambda_sft: float = 0.0
    batch: int = 4  # transitions (grpo) or pairs (dpo) per rank per optimizer step
    lr: float = 1e-4
    checkpoint_every: int = 1  # rounds between checkpoints (and rounds.jsonl lines on disk)


@dataclasses.dataclass
class GuardSettings:
    """The reward-hacking guard: a held-out judge scores every round's samples; when the training reward rose while
    the judge fell over `rounds` round-to-round changes in a row, training stops and OUT/final gets the adapters of
    the round the judge liked best."""

    rounds: int = 3  # M (0: off)
    judge: str = "oracle"  # oracle (SynthPref prompts) | a second VideoReward checkpoint (a held-out model)
    weights: dict[str, float] | None = None  # the judge's Σ w_d; None: the training weights


@dataclasses.dataclass
class PoolSettings:
    actors: int = 1  # actors in the pool
    cpus: float = 0.5  # CPUs per actor
    num_gpus: float = 0.0  # GPUs per actor


@dataclasses.dataclass
class RewardPoolSettings(PoolSettings):
    # serve: the RewardModel deployment on its own autoscaled Serve pool, called by handle (dynamic batching);
    # actors: a fixed pool of reward actors
    kind: str = "serve"
    max_replicas: int = 1  # serve: the most replicas the autoscaler may start (actors: the pool is `actors`)
    batch: int = 8  # serve: most videos per batched forward pass


@dataclasses.dataclass
class OnlineConfig:
    generator: str | None = None  # a WanPipeline folder; None: a tiny random Wan (tiny, tiny_seed)
    tiny: TinyWanConfig = dataclasses.field(default_factory=TinyWanConfig)  # the random Wan's shape
    tiny_seed: int = 0  # seed of the tiny random generator
    dtype: str = "float32"  # bfloat16 on GPUs
    reward: str = ""  # VideoReward checkpoint (train-reward OUT/final, or the released VideoAlign layout)
    base: str | None = None  # base model of a released-layout reward checkpoint
    template_file: str | None = None  # the official prompt template for a released-layout checkpoint
    # more VideoReward checkpoints scored beside `reward`, by name (each on its own pool); their dimensions are
    # NAME.DIM in `weights` and rounds.jsonl, e.g. extra_rewards={judge2: path} weights={VQ: 1, judge2.MQ: 0.5}
    extra_rewards: dict[str, str] = dataclasses.field(default_factory=dict)
    # LiFT critics (train-critic OUT/final) by name, each on a pool of reward_pool.actors actors: per dimension the
    # rating's weight (Good 0.9, Normal 0.2, Bad 0.05), NAME.DIM after the VideoRewards'; an unparsable answer is an
    # error
    critics: dict[str, str] = dataclasses.field(default_factory=dict)
    # latent rewards (train-latent-reward OUT/final, on this generator's latents) by name, scored by the rollout
    # actors on the clean latents they sample; their dimensions are NAME.DIM too, after every VideoReward's
    latent_rewards: dict[str, str] = dataclasses.field(default_factory=dict)
    # r = Σ_d w_d r_d, the reward each sample is trained towards
    weights: dict[str, float] = dataclasses.field(default_factory=lambda: {"VQ": 1.0})
    prompts: str = "32"  # a number (seeded SynthPref prompts), a .txt / manifest, or prompts separated by "|"
    oracle: bool = True  # the SynthPref oracle's view of every sample in rounds.jsonl (SynthPref prompts)
    real_manifest: str | None = None  # train.lambda_sft: real videos (path, prompt)
    real_synth: int = 0  # train.lambda_sft without real_manifest: this many clean SynthPref renders
    lora: OnlineLoraSettings = dataclasses.field(default_factory=OnlineLoraSettings)
    clip: ClipConfig = dataclasses.field(default_factory=lambda: ClipConfig(frames=9, height=32, width=32))
    fps: float = 8.0  # frame rate the samples are written at for the reward model
    guard: GuardSettings = dataclasses.field(default_factory=GuardSettings)  # the reward-hacking stop
    rollout: PoolSettings = dataclasses.field(default_factory=PoolSettings)  # the rollout pool
    reward_pool: RewardPoolSettings = dataclasses.field(default_factory=RewardPoolSettings)  # the reward pool
    train: OnlineTrainSettings = dataclasses.field(default_factory=OnlineTrainSettings)
    seed: int = 0  # prompts, noise and transition choice
    out: str = "online-out"  # output folder, or an object-store prefix (checkpoints kept there)
    address: str | None = None  # Ray cluster address; null: RAY_ADDRESS or a new local Ray
    progress: bool = True  # a line per round
    grid_every: int = 1  # rounds between sample grids (OUT/grids/round_NNNN.gif: a row per prompt); 0: none


DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "online_tiny.yaml"


# --- the job ---------------------------------------------------------------------------------------------------
def _named_dimensions(cfg) -> list[str]:
    """NAME.DIM of every extra VideoReward, LiFT critic and latent reward, in the order their scores come; names
    must be distinct and free of '.'."""
    dims, seen = [], set()
    for section, rewards, dimensions in (
        ("extra_rewards", cfg.extra_rewards, checkpoint_dimensions),
        ("critics", cfg.critics, critic_dimensions),
        ("latent_rewards", cfg.latent_rewards, latent_reward_dimensions),
    ):
        for name, path in rewards.items():
            if not name or "." in name or name in seen:
                raise ConfigError(f"{section}: a name must be non-empty, without '.' and not used twice: {name!r}")
            seen.add(name)
            try:
                dims += [f"{name}.{d}" for d in dimensions(path)]
            except (FileNotFoundError, ValueError) as e:
                raise ConfigError(f"{section}.{name}: {e}") from None
    return dims


def _check(cfg: OnlineConfig) -> list[str]:
    t = cfg.train
    if t.algo not in ALGOS:
        raise ConfigError(f"train.algo must be one of {ALGOS}, got {t.algo!r}")
    if not cfg.lora.enabled:
        raise ConfigError("train-online trains LoRA adapters (lora.enabled=true): its reference is the base model")
    if t.k < 2:
        raise ConfigError(f"train.k must be >= 2 (a group needs two samples), got {t.k}")
    if t.rounds < 1 or t.prompts_per_round < 1 or t.steps < 1:
        raise ConfigError("train.rounds, train.prompts_per_round and train.steps must be >= 1")
    if t.algo == "grpo" and (t.noise_level <= 0 or t.steps < 2):
        raise ConfigError("Flow-GRPO needs train.noise_level > 0 and train.steps >= 2 (its transitions must be random)")
    if t.algo == "grpo" and cfg.lora.dropout > 0:
        raise ConfigError("Flow-GRPO needs lora.dropout=0: the learner must recompute the rollout's exact transitions")
    if t.ref_rounds < 0 or (t.ref_rounds > 0 and t.algo != "dpo"):
        raise ConfigError("train.ref_rounds (>= 0) is online DPO's reference; Flow-GRPO's KL is to the base")
    if t.ref_rounds > 0 and cfg.lora.dropout > 0:
        raise ConfigError("train.ref_rounds needs lora.dropout=0 (the reference pass runs the adapters in train mode)")
    if cfg.lora.experts not in ("both", "high", "low"):
        raise ConfigError(f"lora.experts must be both, high or low (Wan2.2 A14B), got {cfg.lora.experts!r}")
    if t.zero_stage == 3:
        raise ConfigError("train-online runs ZeRO stage 0 or 2 (rank 0 reads the whole adapters every round)")
    for name, value in (("train.batch", t.batch), ("train.checkpoint_every", t.checkpoint_every)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if cfg.rollout.actors < 1 or cfg.reward_pool.actors < 1:
        raise ConfigError("rollout.actors and reward_pool.actors must be >= 1")
    if t.lambda_sft < 0 or (t.lambda_sft > 0 and not (cfg.real_manifest or cfg.real_synth)):
        raise ConfigError("train.lambda_sft needs real videos (real_manifest=PATH or real_synth=N) and must be >= 0")
    if cfg.reward_pool.kind not in ("serve", "actors"):
        raise ConfigError(f"reward_pool.kind must be serve or actors, got {cfg.reward_pool.kind!r}")
    if not 0 < t.train_fraction <= 1:
        raise ConfigError(f"train.train_fraction must be in (0, 1], got {t.train_fraction}")
    if not cfg.reward:
        raise ConfigError("reward=CHECKPOINT is required (a VideoReward checkpoint: train-reward OUT/final)")
    try:
        dims = checkpoint_dimensions(cfg.reward)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"reward: {e}") from None
    dims = [*dims, *_named_dimensions(cfg)]
    unknown = [d for d in cfg.weights if d not in dims]
    if unknown:
        raise ConfigError(f"weights name {unknown}, which the reward model does not score ({dims})")
    g = cfg.guard
    if g.rounds > 0 and g.judge not in ("oracle", "none"):
        try:
            judge_dims = checkpoint_dimensions(g.judge)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"guard.judge: {e} (oracle, none, or a VideoReward checkpoint)") from None
        missing = [d for d in (g.weights or cfg.weights) if d not in judge_dims]
        if missing:
            raise ConfigError(f"guard.judge does not score {missing} (it scores {judge_dims})")
    if g.rounds > 0 and g.judge == "oracle":
        missing = [d for d in (g.weights or cfg.weights) if d not in ("VQ", "MQ", "TA")]
        if missing:
            raise ConfigError(f"guard.judge=oracle scores VQ, MQ and TA only, not {missing} (set guard.weights)")
    return dims


def steps_per_round(cfg: OnlineConfig) -> int:
    """Optimizer steps each rank takes per round (the same on every rank)."""
    from raypipe.flow.online import per_rank_items

    t = cfg.train
    samples = t.prompts_per_round * t.k
    items = (
        samples * max(1, min(t.steps, round(t.train_fraction * t.steps))) if t.algo == "grpo" else t.prompts_per_round
    )
    return t.updates * -(-per_rank_items(items, t.num_workers) // t.batch)


def run(cfg: OnlineConfig) -> dict:
    import ray

    from raypipe.distributed.online import RolloutActor
    from raypipe.recipes.online_learner import train_func

    dims = _check(cfg)  # before any Ray work
    t = cfg.train
    stage = StagedOutput(cfg.out)
    out = stage.dir
    prompts = read_prompts(cfg.prompts, cfg.seed)
    if not prompts:
        raise ConfigError(f"prompts={cfg.prompts!r} gives no prompt")
    if cfg.generator is None:
        cfg = dataclasses.replace(
            cfg, generator=str(make_tiny_generator("wan", out / "generator", cfg.tiny, cfg.tiny_seed))
        )
    cfg = _absolute_paths(cfg)  # the learner's workers run in their own folders: relative paths would not resolve
    real = None
    if t.lambda_sft > 0:  # the real videos' uris and prompts: a manifest, or clean SynthPref renders made here
        shape = {"frames": cfg.clip.frames, "size": f"{cfg.clip.height}x{cfg.clip.width}"}
        table = real_videos(cfg.real_manifest, cfg.real_synth, out / "real", SynthConfig(seed=cfg.seed + 101, **shape))
        real = {"uris": table.column("uri").to_pylist(), "prompts": table.column("prompt").to_pylist()}
    save_config(cfg, out)
    init_ray(cfg.address)
    lora = {"r": cfg.lora.r, "alpha": cfg.lora.alpha, "experts": cfg.lora.experts}
    clip = dataclasses.asdict(cfg.clip)
    # the training reward first, then each extra one: a Serve app or a list of reward actors per reward
    checkpoints = [("", cfg.reward, cfg.base, cfg.template_file)]
    checkpoints += [(name, path, None, None) for name, path in cfg.extra_rewards.items()]
    g = cfg.guard
    judge = g.judge if g.rounds > 0 and g.judge not in ("oracle", "none") else None
    per_round = steps_per_round(cfg)
    rollout, pools = [], None
    try:  # the pools hold the cluster's GPUs: given back at the end, also when starting them or training failed
        for _ in range(cfg.rollout.actors):
            options = {"num_cpus": cfg.rollout.cpus, "num_gpus": cfg.rollout.num_gpus, "max_restarts": 2}
            rollout.append(
                RolloutActor.options(**options).remote(
                    cfg.generator, lora, cfg.dtype, clip, cfg.rollout.num_gpus, cfg.latent_rewards
                )
            )
        pools = RewardPools.start(cfg.reward_pool, checkpoints, list(cfg.critics.values()), judge, cfg.fps, cfg.seed)
        print(
            f"train-online {t.algo}: {t.rounds} rounds x {t.prompts_per_round} prompts x {t.k} samples; "
            f"{cfg.rollout.actors} rollout actors, reward on {RewardPools.describe(cfg.reward_pool)}, "
            f"{t.num_workers} learner ranks x {per_round} steps per round",
            flush=True,
        )
        loop_config = {
            "cfg": to_dict(cfg),
            "dims": dims,
            "prompts": prompts,
            "rollout": rollout,
            "pools": pools,
            "real": real,
            "steps_per_round": per_round,
            "rounds_file": str(out / "rounds.jsonl"),
            "tensorboard_dir": str(out / "tensorboard"),
        }
        progress, wall = fit_trainer(train_func, loop_config, t, out, f"train-online-{t.algo}", {}, stage.storage)
    finally:
        for actor in rollout:
            ray.kill(actor)
        if pools is not None:
            pools.stop()
    write_rounds(progress["rounds"], out / "rounds.jsonl")
    last = progress["rounds"][-1] if progress["rounds"] else {}
    summary = {
        "algo": t.algo,
        "rounds": len(progress["rounds"]),
        "resumes": progress["resumes"],
        "guard": progress.get("guard"),
        "wall_s": round(wall, 1),
        "final": stage.uri_of("final"),
        "first_round": progress["rounds"][0] if progress["rounds"] else None,
        "last_round": last,
        "generator": cfg.generator,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    stage.publish()
    print(f"train-online {t.algo}: {summary['rounds']} rounds in {summary['wall_s']} s; adapters in {summary['final']}")
    return summary


def _absolute_paths(cfg: OnlineConfig) -> OnlineConfig:
    """Every local path of the config made absolute (as given from this folder, or a repo asset such as
    assets/tiny-generator); URIs and names that are not local paths (a hub base model) stay as they are."""

    def local(p):
        if not p or "://" in str(p) or p in ("oracle", "none"):
            return p
        if Path(p).exists():
            return str(Path(p).resolve())
        return str(repo_path(p)) if repo_path(p).exists() else p

    def each(d: dict) -> dict:
        return {name: local(path) for name, path in d.items()}

    return dataclasses.replace(
        cfg,
        generator=local(cfg.generator),
        reward=local(cfg.reward),
        base=local(cfg.base),
        template_file=local(cfg.template_file),
        extra_rewards=each(cfg.extra_rewards),
        critics=each(cfg.critics),
        latent_rewards=each(cfg.latent_rewards),
        real_manifest=local(cfg.real_manifest),
        guard=dataclasses.replace(cfg.guard, judge=local(cfg.guard.judge)),
    )


def write_rounds(rounds: list[dict], path: Path) -> None:
    """rounds.jsonl, whole (a resumed run rewrites it from the checkpoint's list: no round twice, none lost)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rounds))
    tmp.replace(path)
