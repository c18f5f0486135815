"""The reward on its own Serve pool, for online training: the `RewardModel` deployment of the reward app (dynamic
batching, autoscaled replicas) called through a deployment handle from inside the cluster — no HTTP.

    app = deploy_reward_pool("reward-out/final", batch=8, max_replicas=2)     # the driver, before training
    score = serve_scorer(app, "reward-out/final", fps=8.0)                      # rank 0 of the learner, per round
    result = score(frames, prompts, oracle=True)   # {"scores": [N, D], "errors": [...], "oracle": [...]}

Each sample is prepared as relabel would see it (mp4 at `fps`, decoded with the checkpoint's sampling) by small
Ray tasks, then every clip is sent to the deployment at once: Serve batches them across replicas and scales the
replicas with the queue (the "reward on its own pool" shape). A sample that cannot be prepared or scored is an
error on that sample, never a default score.
"""

from __future__ import annotations

import dataclasses

import numpy as np

APP_NAME = "raypipe-online-reward"


def deploy_reward_pool(
    reward: str,
    batch: int = 8,
    batch_wait_s: float = 0.01,
    min_replicas: int = 1,
    max_replicas: int = 1,
    cpus: float = 0.5,
    num_gpus: float = 0.0,
    base: str | None = None,
    template_file: str | None = None,
    name: str = APP_NAME,
) -> str:
    """Deploys `RewardModel` as its own Serve application (no route: handles only); returns the app name. Serve is
    started here without HTTP proxies when it is not running yet (and shut down again by `shutdown_reward_pool`):
    a training job must not leave a proxy listening on the cluster's port."""
    from ray import serve

    from raypipe.reward.scoring import reward_options
    from raypipe.serve.reward import RewardModel

    _quiet_serve_logs()
    if not _serve_running():  # our own Serve: its controller logs warnings only (deploy steps are not news)
        serve.start(proxy_location="Disabled", logging_config={"log_level": "WARNING"})
        _OURS["started"] = True
    if _OURS["started"]:
        _OURS["apps"].add(name)

    options = reward_options(reward, base, template_file)
    deployment = RewardModel.options(
        ray_actor_options={"num_cpus": cpus, "num_gpus": num_gpus},
        # a training job's console is no access log: one line per scored sample would drown the round lines
        logging_config={"enable_access_log": False, "log_level": "WARNING"},
        autoscaling_config={
            "min_replicas": min_replicas,
            "max_replicas": max(min_replicas, max_replicas),
            "target_ongoing_requests": max(1, batch),
        },
        max_ongoing_requests=max(5, 2 * batch),  # one batch scored, one filling (Serve's 5 never fills 8)
    )
    serve.run(deployment.bind(reward, batch, batch_wait_s, None, options), name=name, route_prefix=None)
    return name


def shutdown_reward_pool(name: str = APP_NAME) -> None:
    """Removes the app; Serve itself too when `deploy_reward_pool` started it and no other app of ours is left."""
    from ray import serve

    serve.delete(name)
    if name in _OURS["apps"]:
        _OURS["apps"].discard(name)
        if not _OURS["apps"]:
            serve.shutdown()
            _OURS["started"] = False


_OURS: dict = {"started": False, "apps": set()}  # whether this process started Serve, and its apps on it


def _quiet_serve_logs() -> None:
    """Serve's client-side INFO lines (started, connected, app ready, a handle's router started) in this process
    say nothing a training job's user can act on; its warnings and errors still show."""
    import logging

    logging.getLogger("ray.serve").setLevel(logging.WARNING)


def _serve_running() -> bool:
    """Whether a Serve controller already runs on the cluster (a user's Serve, or one of our earlier pools)."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True


def serve_scorer(app: str, reward: str, fps: float, chunk: int = 8):
    """`score(frames, prompts, oracle)` through the deployed pool (see the module docstring)."""
    import ray
    from ray import serve

    from raypipe.distributed.online_reward import fill_scores, reward_inputs_task
    from raypipe.reward.scoring import checkpoint_dimensions, resolve_sampling

    sampling, _ = resolve_sampling(reward, None)
    dims = checkpoint_dimensions(reward)
    _quiet_serve_logs()  # the learner's rank 0 holds the handle
    handle = serve.get_deployment_handle("RewardModel", app_name=app)

    def score(frames: np.ndarray, prompts: list[str], oracle: bool) -> dict:
        starts = range(0, len(prompts), chunk)
        prepared = ray.get(
            [
                reward_inputs_task.remote(frames[s : s + chunk], prompts[s : s + chunk], sampling, fps, oracle)
                for s in starts
            ]
        )
        clips = [c for p in prepared for c in p["clips"]]
        errors = [e for p in prepared for e in p["errors"]]
        keep = [i for i, c in enumerate(clips) if c is not None]
        responses = [handle.score.remote(clips[i], prompts[i]) for i in keep]  # all at once: Serve batches them
        got = []
        for i, response in zip(keep, responses):
            try:
                got.append(response.result())
            except Exception as e:  # noqa: BLE001 - one sample's failed call is its error
                got.append([np.nan] * len(dims))
                errors[i] = f"reward_call: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        scores = np.full((len(prompts), len(dims)), np.nan)
        fill_scores(scores, errors, keep, got)
        oracle_verdicts = [v for p in prepared for v in (p["oracle"] or [])]
        return {"scores": scores, "errors": errors, "oracle": oracle_verdicts}

    return score


@dataclasses.dataclass
class RewardPools:
    """Every reward of an online run on its own pool, started by the driver and handed to the learner: the
    VideoRewards (a Serve app each, or a list of `RewardActor`s each), the LiFT critics (a list of `CriticActor`s
    each) and the guard's judge (one `RewardActor`, or None). Actor handles and app names travel to the learner
    inside its loop config; `stop` gives the pools' resources back."""

    checkpoints: list[str]  # the VideoReward paths, the training reward first
    apps: list[str]
    rewards: list[list]
    critics: list[list]
    judge: object | None
    fps: float

    @classmethod
    def start(cls, pool, checkpoints: list[tuple], critics: list[str], judge: str | None, fps: float, seed: int):
        """`pool`: the run's reward_pool settings (kind, actors, max_replicas, cpus, num_gpus, batch);
        `checkpoints`: (app suffix, path, base, template_file) per VideoReward; `judge`: a VideoReward path or None."""
        from raypipe.distributed.online_reward import CriticActor, RewardActor

        resources = {"num_cpus": pool.cpus, "num_gpus": pool.num_gpus}
        pools = cls([c[1] for c in checkpoints], [], [], [], None, fps)
        try:  # filled as started: what a failure leaves behind is stopped again
            for name, path, base, template in checkpoints:
                if pool.kind == "serve":
                    app_name = f"{APP_NAME}-{name}" if name else APP_NAME
                    sizes = {"min_replicas": pool.actors, "max_replicas": pool.max_replicas, "cpus": pool.cpus}
                    more = {"num_gpus": pool.num_gpus, "base": base, "template_file": template, "name": app_name}
                    pools.apps.append(deploy_reward_pool(path, pool.batch, 0.01, **sizes, **more))
                else:
                    pools.rewards.append([])
                    for _ in range(pool.actors):
                        actor = RewardActor.options(**resources, max_restarts=2)
                        pools.rewards[-1].append(actor.remote(path, base, template, fps, pool.batch))
            for path in critics:
                pools.critics.append([])
                for _ in range(pool.actors):
                    actor = CriticActor.options(**resources, max_restarts=2)
                    pools.critics[-1].append(actor.remote(path, fps, pool.batch, None, seed))
            if judge is not None:
                pools.judge = RewardActor.options(**resources).remote(judge, None, None, fps)
        except BaseException:
            pools.stop()
            raise
        return pools

    @staticmethod
    def describe(pool) -> str:
        if pool.kind == "serve":
            return f"a Serve pool of {pool.actors}-{max(pool.actors, pool.max_replicas)} replicas"
        return f"{pool.actors} reward actors"

    def scorer(self):
        """`score(frames, prompts, oracle)` of every VideoReward then every critic, their columns side by side."""
        from raypipe.distributed.online_reward import actor_scorer, combined_scorer

        if self.apps:
            scorers = [serve_scorer(app, path, self.fps) for app, path in zip(self.apps, self.checkpoints)]
        else:
            scorers = [actor_scorer(group) for group in self.rewards]
        scorers += [actor_scorer(group) for group in self.critics]  # LiFT critics after them
        return scorers[0] if len(scorers) == 1 else combined_scorer(scorers)

    def stop(self) -> None:
        """Kills the actors and removes the Serve apps (also after a failed run: the pools hold the cluster's GPUs)."""
        import ray

        groups = [*self.rewards, *self.critics, *([[self.judge]] if self.judge is not None else [])]
        for actor in (a for group in groups for a in group):
            ray.kill(actor)
        for app in self.apps:
            shutdown_reward_pool(app)
