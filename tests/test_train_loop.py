"""The stage loop: exact resume from the store, what each stage trains, the length policy."""

from __future__ import annotations

import pytest
import torch

from tests.test_train_helpers import Stop, build, dataset, tiny_model
from videopanda_cluster import VideoPanda
from videopanda_cluster.storage import LocalStore
from videopanda_cluster.train.forward import TrainingModel
from videopanda_cluster.train.loop import epoch_order, train_stage
from videopanda_cluster.train.stages import stage_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return build(tmp_path_factory.mktemp("train_loop"))


def test_resumed_run_ends_bit_identical_to_an_uninterrupted_one(setup, tmp_path):
    _, tokenizer, data = setup
    ds = dataset(data, tokenizer)
    cfg = stage_config(
        "finetune", global_batch=1, micro_batch=1, save_every=2, epochs=1, warmup_ratio=0.5
    )
    full = tiny_model(tokenizer)
    whole = train_stage(full, ds, cfg, LocalStore(tmp_path / "a"), "ft")
    assert whole.steps == 4 and len(whole.losses) == 4

    def kill_after_3(step):
        if step.step == 3:  # step 3 is lost: the last checkpoint is step 2
            raise Stop

    store = LocalStore(tmp_path / "b")
    with pytest.raises(Stop):
        train_stage(tiny_model(tokenizer), ds, cfg, store, "ft", on_step=kill_after_3)
    resumed_model = tiny_model(tokenizer)
    resumed = train_stage(resumed_model, ds, cfg, store, "ft")
    assert resumed.losses == whole.losses
    # plain CE: its one term is the loss, and the history resumes with the rest of the state
    assert resumed.terms == whole.terms == {"ce": whole.losses}
    a, b = full.state_dict(), resumed_model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert not torch.equal(a["llm.lm_head.weight"], tiny_model(tokenizer).llm.lm_head.weight)
    # the final checkpoint is a loadable HF-layout folder with the final weights
    loaded = VideoPanda.from_pretrained(tmp_path / "b" / "ft" / "step-00000004", device="cpu")
    assert all(torch.equal(t, loaded.state_dict()[k]) for k, t in a.items())
    assert loaded.tokenizer is not None


def test_bf16_precision_autocasts_the_passes_and_keeps_fp32_weights(setup, tmp_path):
    """On a CPU the default is fp32 (the same run as asking for it); bf16 autocasts the passes,
    so its losses differ a little, while weights and optimiser stay fp32."""
    _, tokenizer, data = setup
    ds = dataset(data, tokenizer)
    runs = {}
    for precision in (None, "fp32", "bf16"):
        cfg = stage_config(
            "finetune",
            global_batch=1,
            micro_batch=1,
            save_every=4,
            max_steps=3,
            precision=precision,
        )
        model = tiny_model(tokenizer)
        result = train_stage(model, ds, cfg, LocalStore(tmp_path / str(precision)), "ft")
        assert all(p.dtype == torch.float32 for p in model.parameters())
        runs[precision] = (result.losses, model.state_dict())
    assert runs[None][0] == runs["fp32"][0]
    fp32, bf16 = runs["fp32"][0], runs["bf16"][0]
    assert fp32 != bf16 and bf16 == pytest.approx(fp32, rel=0.05)
    assert not torch.equal(
        runs["bf16"][1]["llm.lm_head.weight"], runs["fp32"][1]["llm.lm_head.weight"]
    )


def _changed(before: dict, model, prefix: str) -> list[bool]:
    return [
        not torch.equal(before[k], t) for k, t in model.state_dict().items() if k.startswith(prefix)
    ]


def test_prealign_trains_only_the_visual_path_and_pretrain_the_llm(setup, tmp_path):
    _, tokenizer, data = setup
    ds = dataset(data, tokenizer)
    model = tiny_model(tokenizer)
    before = {k: t.clone() for k, t in model.state_dict().items()}
    store = LocalStore(tmp_path)
    cfg = stage_config("prealign", global_batch=1, micro_batch=1, save_every=10, max_steps=2)
    train_stage(model, ds, cfg, store, "s1")
    assert not any(_changed(before, model, "llm."))  # every LLM tensor bit-unchanged
    assert all(_changed(before, model, "video_projector."))
    stab = {
        k: not torch.equal(before[k], t)
        for k, t in model.named_parameters()
        if k.startswith("video_tower.") and not k.startswith("video_tower.lmhra2.")
    }
    assert sum(stab.values()) >= 0.9 * len(stab), [k for k, c in stab.items() if not c]
    assert not any(p.requires_grad for p in model.llm.parameters())

    before = {k: t.clone() for k, t in model.state_dict().items()}
    cfg = stage_config(
        "pretrain", global_batch=1, micro_batch=1, save_every=10, max_steps=1, warmup_ratio=0.0
    )
    train_stage(model, ds, cfg, store, "s2", resume=False)
    llm = _changed(before, model, "llm.")
    assert sum(llm) == len(llm)  # one AdamW step moves every LLM weight


def test_a_padded_micro_batch_trains_as_its_samples_one_at_a_time(setup):
    """Pads on the right reach no real token: a micro-batch of two samples of different
    lengths has the summed loss, supervised tokens and gradients of the two passed alone."""
    _, tokenizer, data = setup
    ds = dataset(data, tokenizer)
    model = tiny_model(tokenizer).train()
    net = TrainingModel(model)
    samples, seeds = [ds.load(0, 5), ds.load(1, 6)], [5, 6]
    assert len(samples[0].input_ids) != len(samples[1].input_ids)  # one pads the other

    def run(batch, batch_seeds):
        model.zero_grad(set_to_none=True)
        loss, count, _ = net(batch, batch_seeds, 4096, "truncate")
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        return float(loss), count, grads

    loss, count, grads = run(samples, seeds)
    alone = [run([sample], [seed]) for sample, seed in zip(samples, seeds, strict=True)]
    assert count == sum(a[1] for a in alone) > 0
    assert loss == pytest.approx(sum(a[0] for a in alone), rel=1e-5)
    assert grads.keys() == alone[0][2].keys() and "llm.lm_head.weight" in grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, alone[0][2][name] + alone[1][2][name], msg=name)


def test_too_long_samples_are_counted_whether_skipped_or_truncated(setup, tmp_path):
    _, tokenizer, data = setup
    ds = dataset(data, tokenizer)
    model = tiny_model(tokenizer)
    before = {k: t.clone() for k, t in model.named_parameters() if k.startswith("llm.")}
    cfg = stage_config(
        "finetune",
        global_batch=2,
        micro_batch=1,
        save_every=10,
        max_steps=1,
        max_length=50,
        overflow="skip",
    )
    skipped = train_stage(model, ds, cfg, LocalStore(tmp_path / "skip"), "x", resume=False)
    assert skipped.stats.counts == {"too_long": 2}
    assert torch.isnan(torch.tensor(skipped.losses)).all()
    assert not any(_changed(before, model, "llm."))  # no supervised token: no update

    cut = stage_config(
        "finetune", global_batch=2, micro_batch=2, save_every=10, max_steps=1, max_length=300
    )
    truncated = train_stage(model, ds, cut, LocalStore(tmp_path / "cut"), "x")
    first = epoch_order(cut.seed, 0, len(ds))[:2]
    assert sorted(truncated.stats.ids["truncated"]) == sorted(ds.records[i].id for i in first)
    assert truncated.stats.counts == {"truncated": 2}


def test_a_stage_stored_before_precision_existed_resumes_only_at_the_default():
    """A checkpoint of an earlier version has no ``precision`` key: it counts as the default."""
    cfg = stage_config("finetune", global_batch=1, micro_batch=1)
    stored = {k: v for k, v in cfg.to_dict().items() if k != "precision"}
    cfg.check_resumable(stored, "checkpoint step 2")  # no error
    with pytest.raises(ValueError, match=r"precision None → bf16\); use a new output store"):
        stage_config("finetune", global_batch=1, micro_batch=1, precision="bf16").check_resumable(
            stored, "checkpoint step 2"
        )
