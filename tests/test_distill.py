"""Distillation (spec §7.3): the compressor, target alignment, the loss and its integration."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from tests.model_helpers import randomize_
from tests.test_train_helpers import Stop, build, dataset, tiny_model
from videopanda_cluster import VideoPanda, VideoPandaConfig
from videopanda_cluster.model.checkpoint import SKIPPED_PREFIXES
from videopanda_cluster.model.compressor import VideoCompressor, select_layers
from videopanda_cluster.model.generation import splice
from videopanda_cluster.storage import LocalStore
from videopanda_cluster.train.distill import (
    ModuleTeacher,
    StoredTeacher,
    TeacherFeatures,
    align_targets,
    frame_grid,
    frame_losses,
    plan_counts,
    precompute_teacher_features,
    random_teacher,
)
from videopanda_cluster.train.forward import TrainingModel
from videopanda_cluster.train.loop import epoch_order, sample_seed, train_stage
from videopanda_cluster.train.stages import param_groups, stage_config

TEACHER_DIM = 16
CELLS = 8  # student cells per side at 224 px; the random teacher at 112 px / patch 14 has 8 too


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return build(tmp_path_factory.mktemp("distill"))


def two_layer_model(tokenizer) -> VideoPanda:
    """The training tests' tiny model with a 2-layer LLM (hidden states 0, 1, 2)."""
    base = tiny_model(tokenizer).config
    config = dataclasses.replace(base, llm=dict(base.llm, num_hidden_layers=2))
    torch.manual_seed(0)
    model = VideoPanda(config)
    randomize_(model, seed=1, llm_std=0.05)
    model.tokenizer = tokenizer
    return model


def teacher() -> ModuleTeacher:
    return random_teacher(TEACHER_DIM, image_size=112, patch=14, seed=3)


def compressor_for(model: VideoPanda, seed: int = 11) -> VideoCompressor:
    torch.manual_seed(seed)
    return VideoCompressor.for_model(model.config, TEACHER_DIM)


class FixedTeacher:
    """Features given per sample id."""

    def __init__(self, features: dict[str, TeacherFeatures], dim: int) -> None:
        self.features, self.dim = features, dim

    def __call__(self, samples):
        return [self.features[s.id] for s in samples]


def padded(sample, keep: int):
    """The sample with frames ``keep:`` replaced by all-zero frames (as appended padding)."""
    pixels = sample.pixels.clone()
    pixels[keep:] = 0
    return dataclasses.replace(sample, pixels=pixels)


# -- the compressor --------------------------------------------------------------------------
def test_compressor_keys_match_the_checkpoint_table():
    with torch.device("meta"):
        compressor = VideoCompressor(4096, 1024, 32)
    expected = {}
    for j in range(9):
        expected[f"norm_layer.{j}.0.weight"] = (4096,)
        expected[f"norm_layer.{j}.0.bias"] = (4096,)
        expected[f"norm_layer.{j}.1.weight"] = (1024, 4096)
    expected |= {
        "input_layer.weight": (1024, 4096),
        "input_layer.bias": (1024,),
        "output_layer.weight": (1024, 1024),
        "output_layer.bias": (1024,),
    }
    state = {k: tuple(v.shape) for k, v in compressor.state_dict().items()}
    assert state == expected
    assert sum(p.numel() for p in compressor.parameters()) == 43_067_392  # spec §2.7 / §3
    # under the checkpoint prefix the inference loader skips every one of them
    assert all(f"model.video_tower_compressor.{k}".startswith(SKIPPED_PREFIXES) for k in state)


def test_layer_selection():
    reference = [32, 28, 24, 20, 16, 12, 8, 4, 0]
    assert select_layers(32) == reference
    assert VideoCompressor.for_model(VideoPandaConfig(), 1024).layer_idx == reference
    assert select_layers(32, 8) == [32, 24, 16, 8, 0]
    assert select_layers(2) == [2, 1, 0]  # the stride scales with depth, at least 1
    with pytest.raises(ValueError, match="at least one key"):
        select_layers(2, 4)


def test_compressor_matches_a_hand_computation():
    torch.manual_seed(0)
    d_llm, d_t, heads = 6, 4, 2
    compressor = VideoCompressor(d_llm, d_t, num_layers=2, layer_stride=1, num_heads=heads)
    for p in compressor.parameters():
        torch.nn.init.normal_(p)
    states = torch.randn(5, 3, d_llm)  # 5 tokens, H[2], H[1], H[0]
    got = compressor(states)
    hd = d_t // heads
    for n in range(5):
        u = []
        for j in range(3):
            ln, lin = compressor.norm_layer[j]
            x = states[n, j]
            normed = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-5)
            u.append(lin.weight @ (normed * ln.weight + ln.bias))
        heads_out = []
        for h in range(heads):
            part = slice(h * hd, (h + 1) * hd)
            logits = torch.stack([u[0][part] @ u[j][part] for j in (1, 2)]) / math.sqrt(d_t)
            a = logits.softmax(0)
            heads_out.append(a[0] * u[1][part] + a[1] * u[2][part])
        attended = torch.cat(heads_out)
        pred = compressor.input_layer(states[n, 0]) + compressor.output_layer(attended)
        torch.testing.assert_close(got[n], pred, rtol=1e-5, atol=1e-5)


# -- the loss and the target alignment -------------------------------------------------------
def test_frame_losses_by_hand_and_zero_for_equal_inputs():
    pred = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-2.0, -2.0]])
    index = torch.tensor([0, 0, 1])
    # frame 0: cos 1 and 0 → 1 − 0.5; frame 1: cos −1 → 1 − (−1)
    torch.testing.assert_close(frame_losses(pred, target, index, 2), torch.tensor([0.5, 2.0]))
    x = torch.randn(7, 5)
    losses = frame_losses(x, x.clone(), torch.tensor([0, 0, 1, 1, 1, 2, 2]), 3)
    torch.testing.assert_close(losses, torch.zeros(3), atol=1e-6, rtol=0)


def test_targets_keep_the_valid_cells_and_pool_a_finer_teacher_grid():
    config = dataclasses.replace(VideoPandaConfig.tiny(), image_size=56)  # 2×2 student cells
    mask = torch.zeros(56, 56)
    mask[:28] = 1  # top row of cells valid → student grid (1, 2)
    tokens = torch.arange(16.0)[:, None].repeat(1, 3)  # a 4×4 teacher grid, value = index
    got = align_targets(tokens, mask, (1, 2), config)
    # each student cell averages a 2×2 block: (0+1+4+5)/4 and (2+3+6+7)/4
    torch.testing.assert_close(got, torch.tensor([[2.5] * 3, [4.5] * 3]))
    same_grid = tokens[::4]  # 2×2 teacher cells: no pooling, values 0, 4, 8, 12
    assert align_targets(same_grid, mask, (1, 2), config)[:, 0].tolist() == [0.0, 4.0]
    with pytest.raises(ValueError, match="student has 2×2"):
        align_targets(tokens, mask, (2, 2), config)
    with pytest.raises(ValueError, match="square grid"):
        align_targets(torch.zeros(9, 3), mask, (1, 2), config)


def _frame_hidden_states(model, sample, seed):
    """Final hidden states (h·w, D) of each frame's spatial tokens and their grids, located by
    searching the spliced sequence for the frame's tokens (independent of distill.py)."""
    net = TrainingModel(model)
    frames, grids = net.encode_frames(sample.pixels, seed)
    seq = splice(model.llm.get_input_embeddings(), sample.input_ids, frames)
    last = model.llm(inputs_embeds=seq[None], output_hidden_states=True).hidden_states[-1][0]
    out = []
    for frame, (h, w) in zip(frames, grids, strict=True):
        n = frame.shape[0]
        start = next(p for p in range(len(seq) - n + 1) if torch.equal(seq[p : p + n], frame))
        rows = last[start + 1 : start + n].reshape(h, w + 1, -1)  # CTX dropped
        out.append(rows[:, :w].reshape(h * w, -1))  # split column dropped
    return out, grids


@torch.no_grad()
def test_loss_is_zero_when_the_prediction_is_the_aligned_target(setup):
    _, tokenizer, data = setup
    model = two_layer_model(tokenizer).eval()
    width = model.config.llm_width
    compressor = VideoCompressor.for_model(model.config, width, num_heads=4)
    compressor.input_layer.weight.copy_(torch.eye(width))  # pred = H[L]
    compressor.input_layer.bias.zero_()
    compressor.output_layer.weight.zero_()
    compressor.output_layer.bias.zero_()
    ds = dataset(data, tokenizer)
    samples = [ds.load(0), padded(ds.load(2), keep=3)]  # wide (6×8 tokens), tall (8×5), 1 pad
    features = {}
    for sample in samples:
        states, grids = _frame_hidden_states(model, sample, seed=5)
        tokens = torch.randn(len(states), CELLS * CELLS, width)
        valid = torch.zeros(len(states), dtype=torch.bool)
        for k, frame in enumerate(states):
            mask = sample.pixels[k, 3]
            keep = mask.reshape(CELLS, 28, CELLS, 28).amax(dim=(1, 3)).flatten() > 0
            valid[k] = bool(keep.any())
            if valid[k]:
                assert int(keep.sum()) == grids[k][0] * grids[k][1]
                tokens[k, keep] = frame
        features[sample.id] = TeacherFeatures(tokens, valid)
    assert {tuple(f.valid.tolist()) for f in features.values()} == {(1, 1, 1, 1), (1, 1, 1, 0)}
    net = TrainingModel(model, compressor)
    targets = FixedTeacher(features, width)(samples)
    net(samples, [5, 5], 4096, "truncate", targets=targets, distill_scale=1.0)
    assert net.distill_stats.frames == 7  # the padded frame is not counted
    torch.testing.assert_close(net.distill_stats.frame_losses, torch.zeros(7), atol=1e-5, rtol=0)
    # a compressor that does not reproduce H[L] is far from 0
    compressor.output_layer.bias.fill_(1.0)
    net(samples, [5, 5], 4096, "truncate", targets=targets, distill_scale=1.0)
    assert net.distill_stats.frame_losses.min() > 1e-3


def test_padded_frames_are_excluded(setup):
    _, tokenizer, data = setup
    model = two_layer_model(tokenizer).eval()
    torch.manual_seed(0)
    compressor = VideoCompressor.for_model(model.config, TEACHER_DIM)
    net = TrainingModel(model, compressor)
    ds = dataset(data, tokenizer)
    full = ds.load(1)  # square clip: 8×8 tokens per frame
    short = padded(full, keep=2)
    random = teacher()
    (targets,) = random([short])
    assert targets.valid.tolist() == [True, True, False, False]
    with torch.no_grad():
        net([short], [7], 4096, "truncate", targets=[targets], distill_scale=1.0)
        stats = net.distill_stats
        assert stats.frames == 2
        # the video's L_distill is the mean over its two real frames only
        net([full], [7], 4096, "truncate", targets=random([full]), distill_scale=1.0)
        assert net.distill_stats.frames == 4
        torch.testing.assert_close(stats.loss_sum / stats.frames, stats.frame_losses.mean())
        # whatever the teacher says about the padded frames' tokens changes nothing
        noisy = TeacherFeatures(targets.tokens.clone(), targets.valid)
        noisy.tokens[2:] = torch.randn_like(noisy.tokens[2:]) * 100
        net([short], [7], 4096, "truncate", targets=[noisy], distill_scale=1.0)
        assert torch.equal(net.distill_stats.frame_losses, stats.frame_losses)
        # a padded frame claimed valid has no teacher tokens in its (empty) valid region
        bad = TeacherFeatures(targets.tokens, torch.ones(4, dtype=torch.bool))
        with pytest.raises(ValueError, match="valid region"):
            net([short], [7], 4096, "truncate", targets=[bad], distill_scale=1.0)
    # the data-only plan (grids by STAB's crop rule) agrees with the forward pass
    _, grids = net.encode_frames(short.pixels, 7)
    assert grids == [(8, 8), (8, 8), (4, 4), (4, 4)]  # padded: the top-left quarter
    assert [frame_grid(f[3], model.config) for f in short.pixels] == grids
    samples = [short, ds.load(0), ds.load(2)]
    with torch.no_grad():
        _, count, _ = net(samples, [1, 2, 3], 4096, "truncate", random(samples), 1.0)
    assert plan_counts(samples, random(samples), model.config, 4096, "truncate") == (
        count,
        net.distill_stats.frames,
    )
    # truncation inside a frame leaves that frame (and the later ones) out of L_distill
    with torch.no_grad():
        net([full], [7], 200, "truncate", random([full]), 1.0)
    planned = plan_counts([full], random([full]), model.config, 200, "truncate")
    assert 0 < net.distill_stats.frames == planned[1] < 4


def test_distillation_gradients_reach_stab_and_the_llm_layers(setup):
    _, tokenizer, data = setup
    model = two_layer_model(tokenizer)
    torch.manual_seed(0)
    compressor = VideoCompressor.for_model(model.config, TEACHER_DIM)
    assert compressor.layer_idx == [2, 1, 0]
    with torch.no_grad():  # H[0] (the input embeddings) feeds nothing: only paths through layers
        compressor.norm_layer[2][1].weight.zero_()
    net = TrainingModel(model, compressor)
    sample = dataset(data, tokenizer).load(0)
    net([sample], [3], 4096, "truncate", teacher()([sample]), distill_scale=1.0)
    net.distill_stats.loss_sum.backward()  # the distillation term alone
    grads = {k: p.grad for k, p in model.named_parameters()}
    for name in (
        "video_tower.patch_embedding.weight",
        "video_tower.local_attention.proj.weight",
        "video_projector.0.weight",
        "llm.model.layers.0.self_attn.q_proj.weight",
        "llm.model.layers.1.mlp.down_proj.weight",
    ):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    assert grads["llm.lm_head.weight"] is None  # the logits are not involved


def test_weight_zero_is_plain_ce(setup, tmp_path):
    _, tokenizer, data = setup
    ds = dataset(data, tokenizer)
    model = two_layer_model(tokenizer)
    samples = [ds.load(0), ds.load(1)]
    plain, count, _ = TrainingModel(model)(samples, [1, 2], 4096, "truncate")
    compressor = VideoCompressor.for_model(model.config, TEACHER_DIM)
    net = TrainingModel(model, compressor)
    same, same_count, _ = net(samples, [1, 2], 4096, "truncate", teacher()(samples), 0.0)
    assert torch.equal(plain, same) and count == same_count and net.distill_stats is None

    cfg = stage_config("finetune", global_batch=2, micro_batch=1, save_every=10, max_steps=2)
    a, b = two_layer_model(tokenizer), two_layer_model(tokenizer)
    ref = train_stage(a, ds, cfg, LocalStore(tmp_path / "a"), "x")
    off = train_stage(b, ds, cfg, LocalStore(tmp_path / "b"), "x", teacher=teacher())
    assert off.losses == ref.losses
    assert all(torch.equal(t, b.state_dict()[k]) for k, t in a.state_dict().items())

    # with a weight the first step's loss is CE + w · L_distill (the weights start equal)
    steps = []
    w = 0.5
    on = dataclasses.replace(cfg, distill_weight=w, max_steps=1)
    train_stage(
        two_layer_model(tokenizer),
        ds,
        on,
        LocalStore(tmp_path / "c"),
        "x",
        teacher=teacher(),
        on_step=steps.append,
    )
    assert 0 < steps[0].distill < 2
    assert steps[0].loss == pytest.approx(ref.losses[0] + w * steps[0].distill, rel=1e-5)


def test_the_gradient_is_the_global_ce_mean_plus_the_weighted_frame_mean(setup, tmp_path):
    """T and F are counted over the global batch, whatever its split into micro-batches."""
    _, tokenizer, data = setup
    ds = dataset(data, tokenizer)
    w = 0.7
    cfg = stage_config(
        "pretrain",
        global_batch=2,
        micro_batch=1,
        save_every=10,
        max_steps=1,
        warmup_ratio=0.0,
        distill_weight=w,
        max_grad_norm=1e9,  # report the norm, never clip
    )
    norms = []
    for micro in (1, 2):
        model = two_layer_model(tokenizer)
        steps = []
        train_stage(
            model,
            ds,
            dataclasses.replace(cfg, micro_batch=micro),
            LocalStore(tmp_path / str(micro)),
            "x",
            teacher=teacher(),
            compressor=compressor_for(model),
            on_step=steps.append,
        )
        norms.append(steps[0].grad_norm)
    # by hand: CE_sum / T + w · D_sum / F in one pass over the global batch
    model = two_layer_model(tokenizer).train()
    compressor = compressor_for(model)
    order = epoch_order(cfg.seed, 0, len(ds))
    seeds = [sample_seed(cfg.seed, 0, p) for p in range(2)]
    samples = [ds.load(int(order[p]), seeds[p]) for p in range(2)]
    net = TrainingModel(model, compressor)
    loss, tokens, _ = net(samples, seeds, cfg.max_length, cfg.overflow, teacher()(samples), 1.0)
    stats = net.distill_stats
    assert stats.frames == 8 and tokens > 0
    total = (loss - stats.loss_sum) / tokens + w * stats.loss_sum / stats.frames
    total.backward()
    params = [*model.parameters(), *compressor.parameters()]
    expected = float(torch.stack([p.grad.norm() for p in params if p.grad is not None]).norm())
    assert norms == pytest.approx([expected, expected], rel=1e-4)


# -- teachers ----------------------------------------------------------------------------------
def test_stored_teacher_round_trip(setup, tmp_path):
    _, tokenizer, data = setup
    ds = dataset(data, tokenizer)
    store = LocalStore(tmp_path)
    module_teacher = teacher()
    assert precompute_teacher_features(module_teacher, ds, store, "teachers/rand") == []
    assert len(store.list("teachers/rand/videos/")) == len(ds)
    stored = StoredTeacher(store, "teachers/rand")
    assert stored.dim == TEACHER_DIM
    samples = [ds.load(i) for i in range(len(ds))]
    for got, want in zip(stored(samples), module_teacher(samples), strict=True):
        assert torch.equal(got.tokens, want.tokens) and torch.equal(got.valid, want.valid)
        assert want.tokens.shape == (4, CELLS * CELLS, TEACHER_DIM)
    with pytest.raises(KeyError, match="nobody"):
        stored([dataclasses.replace(samples[0], id="nobody")])


def test_module_teacher_is_frozen_and_sees_resized_frames(setup):
    _, tokenizer, data = setup
    sample = dataset(data, tokenizer).load(0)
    t = teacher()
    assert not any(p.requires_grad for p in t.module.parameters()) and not t.module.training
    (features,) = t([sample])
    assert features.tokens.shape == (4, 64, TEACHER_DIM) and not features.tokens.requires_grad
    half = F.interpolate(sample.pixels[:, :3], size=112, mode="bilinear", antialias=True)
    torch.testing.assert_close(features.tokens, t.module(half))


# -- stages ----------------------------------------------------------------------------------
def _changed(before: dict, after: dict, prefix: str = "") -> list[bool]:
    return [not torch.equal(before[k], t) for k, t in after.items() if k.startswith(prefix)]


def test_prealign_with_distillation_trains_the_compressor_not_the_llm_and_resumes(setup, tmp_path):
    _, tokenizer, data = setup
    ds = dataset(data, tokenizer)
    cfg = stage_config(
        "prealign", global_batch=1, micro_batch=1, save_every=2, max_steps=3, distill_weight=1.0
    )
    model = two_layer_model(tokenizer)
    before = {k: t.clone() for k, t in model.state_dict().items()}
    compressor = compressor_for(model)
    start = {k: t.clone() for k, t in compressor.state_dict().items()}
    groups = param_groups(model, cfg, compressor)
    assert {id(p) for p in compressor.parameters()} <= {id(p) for p in groups[0]["params"]}
    assert groups[0]["name"] == "visual" and groups[0]["lr"] == cfg.visual_lr
    store = LocalStore(tmp_path / "a")
    whole = train_stage(model, ds, cfg, store, "s1", teacher=teacher(), compressor=compressor)
    after = model.state_dict()
    assert not any(_changed(before, after, "llm."))  # every LLM tensor bit-unchanged
    assert all(_changed(before, after, "video_projector."))
    assert all(_changed(start, compressor.state_dict()))
    stab = _changed(before, after, "video_tower.")
    assert sum(stab) > 0.5 * len(stab)
    # the model folder stays an inference checkpoint without the compressor
    folder = tmp_path / "a" / "s1" / "step-00000003"
    loaded = VideoPanda.from_pretrained(folder, device="cpu")
    assert loaded.load_report.skipped == 0
    assert not any("compressor" in k for k in loaded.state_dict())

    def kill_after_3(step):
        if step.step == 3:
            raise Stop

    resumed_store = LocalStore(tmp_path / "b")
    killed = two_layer_model(tokenizer)
    with pytest.raises(Stop):
        train_stage(
            killed,
            ds,
            cfg,
            resumed_store,
            "s1",
            teacher=teacher(),
            compressor=compressor_for(killed),
            on_step=kill_after_3,
        )
    resumed_model = two_layer_model(tokenizer)
    resumed_compressor = VideoCompressor.for_model(resumed_model.config, TEACHER_DIM)  # loaded
    resumed = train_stage(
        resumed_model,
        ds,
        cfg,
        resumed_store,
        "s1",
        teacher=teacher(),
        compressor=resumed_compressor,
    )
    assert resumed.losses == whole.losses
    assert not any(_changed(after, resumed_model.state_dict()))
    assert not any(_changed(compressor.state_dict(), resumed_compressor.state_dict()))


def test_the_inference_loader_skips_compressor_keys(setup, tmp_path):
    from safetensors.torch import load_file, save_file

    _, tokenizer, _ = setup
    model = two_layer_model(tokenizer)
    model.save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    compressor = VideoCompressor.for_model(model.config, TEACHER_DIM)
    extra = {f"model.video_tower_compressor.{k}": t for k, t in compressor.state_dict().items()}
    save_file({**tensors, **extra}, str(tmp_path / "model.safetensors"))
    loaded = VideoPanda.from_pretrained(tmp_path, device="cpu")
    assert loaded.load_report.skipped == len(extra) and not loaded.load_report.unmatched
    assert all(torch.equal(t, loaded.state_dict()[k]) for k, t in model.state_dict().items())


def test_distillation_needs_a_teacher(setup, tmp_path):
    _, tokenizer, data = setup
    cfg = stage_config("finetune", global_batch=1, micro_batch=1, save_every=1, distill_weight=1)
    with pytest.raises(ValueError, match="needs a teacher"):
        train_stage(
            two_layer_model(tokenizer), dataset(data, tokenizer), cfg, LocalStore(tmp_path), "x"
        )
    with pytest.raises(ValueError, match="distill_weight"):
        stage_config("finetune", distill_weight=-1.0)
