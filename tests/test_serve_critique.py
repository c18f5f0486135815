"""`POST /critique` on the reward app (a LiFT critic beside the reward model): ratings, reasons and lift_weight as
the critic answers offline, the same 4xx JSON errors and auth as /score, and no /critique without a critic."""

from __future__ import annotations

import socket

import pytest
import requests

from tests.conftest import CRITIC_ANSWERS, moving_square_frames

TOKEN_ENV = "RAYPIPE_TEST_CRITIQUE_TOKEN"
AUTH = {"Authorization": "Bearer s3cret"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ray_local, reward_checkpoint, critic_checkpoint, tmp_path_factory):
    from ray import serve

    from raypipe.serve.apps import reward_app
    from raypipe.serve.run import start
    from raypipe.video.encode import write_mp4

    root = tmp_path_factory.mktemp("critique")
    write_mp4(moving_square_frames(16, 56, 56, seed=3), root / "v.mp4", 8.0)
    light = {"ray_actor_options": {"num_cpus": 0}}
    common = {"reward": reward_checkpoint, "batch": 4, "batch_wait_s": 0.1, "allowed_roots": [str(root)]}
    apps = [
        (
            "critic",
            "/",
            reward_app(
                {
                    **common,
                    "critic": critic_checkpoint,
                    "auth_token_env": TOKEN_ENV,
                    "deployment_options": {
                        "RewardModel": light,
                        "CriticModel": light,
                        "RewardAPI": {
                            "ray_actor_options": {"num_cpus": 0, "runtime_env": {"env_vars": {TOKEN_ENV: "s3cret"}}}
                        },
                    },
                }
            ),
        ),
        (
            "plain",
            "/plain",
            reward_app({**common, "deployment_options": {"RewardModel": light, "RewardAPI": light}}),
        ),
    ]
    url = start(apps, port=_free_port())
    yield {"url": url, "video": root / "v.mp4", "critic": critic_checkpoint}
    serve.shutdown()


def _post(url, path, prompt="a red square moving right", headers=AUTH, **data):
    with open(path, "rb") as f:
        fields = {"prompt": prompt} if prompt is not None else {}
        return requests.post(
            f"{url}/critique",
            files={"file": ("v.mp4", f, "video/mp4")},
            data={**fields, **data},
            headers=headers,
            timeout=120,
        )


def test_critique_answers_as_the_critic_does_offline(server):
    from raypipe.critic.model import Critic
    from raypipe.reward.scoring import resolve_sampling
    from raypipe.video.decode import decode_video

    resp = _post(server["url"], server["video"])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["ratings"] == {d: a.split(".")[0] for d, a in CRITIC_ANSWERS.items()}
    assert body["errors"] == {} and body["lift_weight"] == pytest.approx((0.9 + 0.05 + 0.2) / 3)
    critic = Critic.from_pretrained(server["critic"])
    frames = decode_video(str(server["video"]), resolve_sampling(server["critic"], None)[0]).frames
    offline = critic.answer([frames] * 3, ["a red square moving right"] * 3, list(CRITIC_ANSWERS))
    assert [body["answers"][d] for d in CRITIC_ANSWERS] == offline
    # by URI, one dimension: no lift_weight (it needs every dimension)
    resp = requests.post(
        f"{server['url']}/critique",
        json={"uri": str(server["video"]), "prompt": "a red square moving right", "dimensions": "MQ"},
        headers=AUTH,
        timeout=120,
    )
    assert resp.status_code == 200 and resp.json()["ratings"] == {"MQ": "Bad"} and resp.json()["lift_weight"] is None
    version = requests.get(f"{server['url']}/version", headers=AUTH, timeout=30).json()
    assert version["critic"]["dimensions"] == ["VQ", "MQ", "TA"]


@pytest.mark.parametrize(
    "case, status, kind",
    [
        ("missing_prompt", 422, "invalid_request"),
        ("not_a_video", 415, "not_a_video"),
        ("unknown_dimension", 422, "unknown_dimension"),
        ("uri_outside_roots", 403, "uri_not_allowed"),
        ("no_critic", 404, "no_critic"),
        ("no_token", 401, "unauthorized"),
    ],
)
def test_bad_critique_requests(server, case, status, kind, tmp_path):
    url, video = server["url"], server["video"]
    if case == "missing_prompt":
        resp = _post(url, video, prompt=None)
    elif case == "not_a_video":
        bad = tmp_path / "notes.mp4"
        bad.write_text("text, not a video" * 10)
        resp = _post(url, bad)
    elif case == "unknown_dimension":
        resp = _post(url, video, dimensions="VQ,XX")
    elif case == "uri_outside_roots":
        resp = requests.post(
            f"{url}/critique", json={"uri": str(tmp_path / "x.mp4"), "prompt": "p"}, headers=AUTH, timeout=30
        )
    elif case == "no_token":
        resp = _post(url, video, headers={})
    else:
        resp = _post(f"{url}/plain", video, headers={})
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] == kind and resp.json()["message"]


def test_critic_app_args_are_checked(reward_checkpoint, critic_checkpoint):
    from raypipe.config import ConfigError
    from raypipe.serve.apps import reward_app

    with pytest.raises(ConfigError, match="not a critic checkpoint"):
        reward_app({"reward": reward_checkpoint, "critic": "/nonexistent"})
    with pytest.raises(ConfigError, match="weight_map"):
        reward_app({"reward": reward_checkpoint, "critic": critic_checkpoint, "weight_map": {"Good": 1}})
