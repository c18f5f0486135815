"""The generative critic without Ray: answer-token masking, the answer loss against a hand computation, batched
left-padded generation equal to one-by-one, words added to a word-level tokenizer, save/load round trip,
the held-out report."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raypipe.critic.metrics import critic_report
from raypipe.critic.model import Critic, CriticModelConfig, answer_loss, rating_predictions
from raypipe.critic.processor import IGNORE, unknown_words
from raypipe.critic.training import conversations
from raypipe.reward.backbone import load_backbone

ASSET = "assets/tiny-qwen2vl"
DIMS = ["VQ", "MQ", "TA"]


@pytest.fixture(scope="module")
def critic():
    _, tok = load_backbone(ASSET)
    words = unknown_words(tok, ["Good. It is sharp, not blurry.", "Normal.", "Bad. It jitters.", "Rate it, say why."])
    torch.manual_seed(0)
    cfg = CriticModelConfig(
        name_or_path=ASSET,
        added_words=words,
        train_language_model=True,
        max_new_tokens=6,
        questions={"VQ": "Rate it, say why.", "MQ": "Rate the motion.", "TA": "Rate the prompt."},
    )
    return Critic.build(cfg)


def _clips(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (4, 56, 56, 3), dtype=np.uint8) for _ in range(n)]


def test_unknown_words_are_added_as_whole_words(critic):
    tok = critic.processor.tokenizer
    assert "good" in tok.get_vocab() and "jitters" in tok.get_vocab()
    assert tok.tokenize("Good. goodness") == ["good", ".", "<unk>"]  # never "good" inside another word
    assert critic.vlm.get_input_embeddings().num_embeddings == len(tok)

    # a byte-level BPE tokenizer has no unknown token: nothing to add
    class NoUnk:
        unk_token_id = None

    assert unknown_words(NoUnk(), ["anything"]) == []


def test_labels_cover_the_answer_and_end_token_only(critic):
    p = critic.processor
    batch = p.train_batch(
        _clips(2), ["a red circle moving left", "a cat"], ["VQ", "TA"], ["Good. It is sharp.", "Bad."]
    )
    for i, answer in enumerate(["Good. It is sharp.", "Bad."]):
        ids = batch["input_ids"][i][batch["attention_mask"][i] > 0]
        labels = batch["labels"][i][batch["attention_mask"][i] > 0]
        expected = p.tokenizer(answer, add_special_tokens=False)["input_ids"] + [p.end_id]
        assert labels[labels != IGNORE].tolist() == expected
        assert ids[-len(expected) :].tolist() == expected  # the answer closes the sequence
        assert (labels[: -len(expected)] == IGNORE).all()
        text = p.tokenizer.decode(ids[: -len(expected)])
        assert text.endswith("assistant") and (i == 0) == ("rate it , say why" in text)
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()  # padding is never a target
    n_video = int((batch["mm_token_type_ids"] == 2).sum())
    assert n_video == 2 * (4 // 2) * (56 // 14) ** 2 // 4


def test_answer_loss_against_a_hand_computation():
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, 1], [IGNORE, 2, 6, IGNORE, IGNORE]])
    logp = torch.log_softmax(logits, -1)
    # targets at positions j >= 1 come from logits at j - 1: row 0 -> (1,3), (2,4), (3,1); row 1 -> (0,2), (1,6)
    terms = [
        (-logp[0, 1, 3], True),
        (-logp[0, 2, 4], False),
        (-logp[0, 3, 1], False),
        (-logp[1, 0, 2], True),
        (-logp[1, 1, 6], False),
    ]
    for w in (1.0, 4.0):
        num = sum(ce * (w if first else 1.0) for ce, first in terms)
        den = sum(w if first else 1.0 for _, first in terms)
        assert answer_loss(logits, labels, w).item() == pytest.approx((num / den).item(), rel=1e-6)
    # rating_weight 1 is transformers' own LM loss
    ref = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), ignore_index=IGNORE
    )
    assert answer_loss(logits, labels).item() == pytest.approx(ref.item(), rel=1e-6)


def test_teacher_forced_rating_prediction(critic):
    ids = critic.rating_ids()
    labels = torch.tensor([[IGNORE, ids[2], 9], [IGNORE, IGNORE, ids[0]]])
    logits = torch.zeros(2, 3, 70)
    logits[0, 0, ids[1]] = 5.0  # row 0 predicts Normal (truth Bad)
    logits[1, 1, ids[0]] = 1.0  # row 1 predicts Good (truth Good)
    logits[1, 1, 3] = 9.0  # a non-rating token wins overall but the argmax is over ratings only
    pred, truth = rating_predictions(logits, labels, ids)
    assert pred.tolist() == [1, 0] and truth.tolist() == [2, 0]


def test_batched_generation_equals_one_by_one(critic):
    clips = _clips(3, seed=4)
    clips[1] = clips[1][:, :28, :28]  # a different video length within the batch: left padding must not matter
    prompts = ["a red circle moving left", "a blue square", "a green triangle moving up"]
    batched = critic.answer(clips, prompts, DIMS)
    single = [critic.answer([c], [p], [d])[0] for c, p, d in zip(clips, prompts, DIMS)]
    assert batched == single and all(isinstance(a, str) for a in batched)


def test_save_and_load_round_trip(critic, tmp_path):
    clips = _clips(2, seed=7)
    before = critic.answer(clips, ["a red circle moving left"] * 2, ["VQ", "MQ"])
    batch = critic.processor.train_batch(clips, ["p", "p"], ["VQ", "TA"], ["Good. It is sharp.", "Bad."])
    with torch.no_grad():
        loss = critic(batch).item()
    critic.save_pretrained(tmp_path / "c")
    loaded = Critic.from_pretrained(tmp_path / "c")
    assert len(loaded.processor.tokenizer) == len(critic.processor.tokenizer)
    assert loaded.answer(clips, ["a red circle moving left"] * 2, ["VQ", "MQ"]) == before
    with torch.no_grad():
        assert loaded(
            loaded.processor.train_batch(clips, ["p", "p"], ["VQ", "TA"], ["Good. It is sharp.", "Bad."])
        ).item() == pytest.approx(loss, rel=1e-5)
    with pytest.raises(FileNotFoundError, match="not a critic checkpoint"):
        Critic.from_pretrained(tmp_path)


def test_unsupported_backbone_and_missing_question_are_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llava"}')
    with pytest.raises(ValueError, match="not supported by the critic"):
        Critic.build(CriticModelConfig(name_or_path=str(tmp_path)))
    with pytest.raises(ValueError, match=r"no question for dimensions \['TA'\]"):
        Critic.build(CriticModelConfig(name_or_path=ASSET, questions={"VQ": "q", "MQ": "q"}))


def test_conversations_skip_unrated_dimensions():
    rows = [{"rating_VQ": "Good", "reason_VQ": "Sharp.", "rating_MQ": None, "rating_TA": "Bad", "reason_TA": None}]
    assert conversations(rows, DIMS, score_only=False) == [(0, "VQ", "Good. Sharp."), (0, "TA", "Bad.")]
    assert conversations(rows, DIMS, score_only=True) == [(0, "VQ", "Good."), (0, "TA", "Bad.")]


def test_critic_report_counts_unparsable_as_wrong():
    answers = {
        "VQ": ["Good. fine", "bad .", "garbage", "Normal."],
        "TA": ["Good.", "Bad. the circle is green , not red ."],
    }
    truth = {"VQ": ["Good", "Bad", "Good", None], "TA": ["Good", "Normal"]}
    synth = {
        "prompt_attrs": [("red", "circle", "left")] * 2,
        "shown": [("red", "circle", "left"), ("green", "circle", "left")],
    }
    r = critic_report(answers, truth, ["VQ", "TA"], synth)
    assert r["VQ"]["accuracy"] == pytest.approx(2 / 3) and r["VQ"]["n"] == 3 and r["VQ"]["unparsable"] == 1
    assert r["VQ"]["confusion"]["Good"] == {"Good": 1, "Normal": 0, "Bad": 0, "unparsable": 1}
    assert r["TA"]["accuracy"] == 0.5
    assert r["TA"]["reasons"]["names_wrong_attributes"] == 1.0 and r["TA"]["reasons"]["no_false_claims"] == 1.0
    assert r["TA"]["reasons"]["names_some_wrong_attribute"] == 1.0
    assert r["VQ"]["correct"] == [1, 1, 0, None] and r["TA"]["correct"] == [1, 0]
    assert r["mean_accuracy"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert math.isnan(critic_report({"VQ": []}, {"VQ": []}, ["VQ"])["VQ"]["accuracy"])


def test_added_words_get_distinct_rows(critic):
    tok = critic.processor.tokenizer
    ids = [tok.convert_tokens_to_ids(w) for w in ("good", "normal", "bad")]
    for table in (critic.vlm.get_input_embeddings().weight, critic.vlm.get_output_embeddings().weight):
        rows = table[ids].detach()
        assert torch.cdist(rows, rows)[~torch.eye(3, dtype=bool)].min() > 0.1  # mean resizing made them equal


def test_video_after_the_question_when_asked(critic):
    from raypipe.critic.processor import CriticProcessor

    p = CriticProcessor(critic.processor.tokenizer, critic.processor.questions, video_first=False)
    sample = p.encode(_clips(1)[0], "a red circle", "VQ")
    ids, types = sample["input_ids"], sample["mm_token_type_ids"]
    first_video = types.index(2)
    question = p.tokenizer("rate it", add_special_tokens=False)["input_ids"][0]
    assert ids.index(question) < first_video  # the question, then the video, then the generation prompt
    default = critic.processor.encode(_clips(1)[0], "a red circle", "VQ")  # LiFT's order: the video first
    assert default["input_ids"].index(question) > default["mm_token_type_ids"].index(2)


def test_sampled_answers_repeat_with_the_same_generator(critic):
    import dataclasses

    critic.cfg = dataclasses.replace(critic.cfg, temperature=1.0)
    try:
        clips, prompts = _clips(2, seed=9), ["a red circle moving left"] * 2
        runs = [critic.answer(clips, prompts, ["VQ", "TA"], torch.Generator().manual_seed(s)) for s in (3, 3, 4)]
    finally:
        critic.cfg = dataclasses.replace(critic.cfg, temperature=0.0)
    assert runs[0] == runs[1] and runs[0] != runs[2]  # seeded sampling, not greedy
