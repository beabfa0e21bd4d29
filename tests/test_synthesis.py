"""The grouped synthesis is the one-UFC-at-a-time synthesis, run in parallel."""
import pytest
import torch
from conftest import OddBatchNorms
from torch import nn

from infer_distill.config.schema import SynthesisConfig
from infer_distill.errors import ConfigError
from infer_distill.method.synthesis import (
    BatchNormUseError,
    check_forward_budget,
    class_batch_index,
    compose,
    forward_chunks,
    group_losses,
    recorded_bn_inputs,
    synthesize_ufcs,
)
from infer_distill.models.networks import batchnorm_layers, create_model


def _teacher(arch="convnet_d3_w32", seed=0, chans=3, size=16, classes=5):
    torch.manual_seed(seed)
    model = create_model(arch, num_classes=classes, in_chans=chans, image_size=size, mean=[0.5] * chans, std=[0.25] * chans)
    # non-trivial running statistics, as a trained teacher has
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(32, chans, size, size))
    return model.eval().requires_grad_(False)


def test_grouped_loss_equals_per_ufc_loss_values_and_gradients():
    teacher = _teacher()
    G, C = 3, 5
    natural = torch.rand(G, C, 3, 16, 16)
    labels = torch.arange(C)
    ufc = (0.1 * torch.randn(G, 1, 3, 16, 16)).requires_grad_(True)

    batch = compose(natural, ufc, class_batch_index(C, None)).flatten(0, 1)
    group_ids = torch.arange(G).repeat_interleave(C)
    total, ce, bn = group_losses(teacher, batch, labels.repeat(G), group_ids, G, r_bn=1.0, first_bn_multiplier=10.0)
    total.sum().backward()
    grouped_grad = ufc.grad.clone()

    for g in range(G):
        u = ufc[g].detach().clone().requires_grad_(True)
        x = compose(natural[g], u, class_batch_index(C, None))
        t1, ce1, bn1 = group_losses(teacher, x, labels, torch.zeros(C, dtype=torch.long), 1, 1.0, 10.0)
        t1.sum().backward()
        torch.testing.assert_close(total[g], t1[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ce[g], ce1[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn[g], bn1[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grouped_grad[g], u.grad, rtol=1e-4, atol=1e-7)


def test_bn_term_matches_a_direct_computation():
    teacher = _teacher()
    x = torch.rand(5, 3, 16, 16)
    with recorded_bn_inputs(teacher) as inputs:
        teacher(x)
    expected = 0.0
    for i, layer in enumerate(batchnorm_layers(teacher)):
        inp = inputs[layer]
        mean = inp.mean((0, 2, 3))
        var = inp.permute(1, 0, 2, 3).reshape(inp.shape[1], -1).var(1, unbiased=False)
        expected += (10.0 if i == 0 else 1.0) * (torch.norm(mean - layer.running_mean) + torch.norm(var - layer.running_var))
    _, _, bn = group_losses(teacher, x, torch.arange(5), torch.zeros(5, dtype=torch.long), 1, 1.0, 10.0)
    torch.testing.assert_close(bn[0], expected, rtol=1e-5, atol=1e-6)


def test_hooks_live_only_as_long_as_the_block():
    teacher = _teacher()
    with recorded_bn_inputs(teacher) as inputs:
        teacher(torch.rand(2, 3, 16, 16))
    n = len(inputs)
    assert n == 3 and list(inputs) == [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
    teacher(torch.rand(2, 3, 16, 16))
    assert len(inputs) == n  # nothing recorded after the block: hooks removed
    assert all(not m._forward_hooks for m in teacher.modules())


def test_gradients_reach_only_the_ufc_and_the_loss_falls():
    teacher = _teacher()
    natural = (torch.rand(2, 5, 3, 16, 16) * 255).to(torch.uint8)
    cfg = SynthesisConfig(iterations=5, lr=0.5, jitter=2)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = synthesize_ufcs([teacher], natural, [0, 1], cfg, seed=0)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # teacher untouched
    assert all(p.grad is None for p in teacher.parameters())
    assert result.ufc.abs().sum() > 0 and not result.ufc.requires_grad
    assert (result.final_loss < result.initial_loss).all()


def test_same_seed_gives_byte_identical_ufcs_and_other_seed_differs():
    teachers = [_teacher(), _teacher("resnet_tiny", seed=1)]
    natural = (torch.rand(2, 5, 3, 16, 16) * 255).to(torch.uint8)
    cfg = SynthesisConfig(iterations=4, jitter=3)
    a = synthesize_ufcs(teachers, natural, [0, 1], cfg, seed=0, progress=False).ufc
    b = synthesize_ufcs(teachers, natural, [0, 1], cfg, seed=0, progress=False).ufc
    c = synthesize_ufcs(teachers, natural, [0, 1], cfg, seed=1, progress=False).ufc
    assert a.shape == (2, 2, 1, 3, 16, 16)
    assert a.numpy().tobytes() == b.numpy().tobytes()
    assert not torch.equal(a, c)


def test_grouped_optimisation_equals_one_subset_at_a_time():
    teachers = [_teacher()]
    natural = (torch.rand(3, 5, 3, 16, 16) * 255).to(torch.uint8)
    cfg = SynthesisConfig(iterations=6, jitter=2)
    together = synthesize_ufcs(teachers, natural, [0, 1, 2], cfg, seed=3, progress=False).ufc
    for s in range(3):
        alone = synthesize_ufcs(teachers, natural[s : s + 1], [s], cfg, seed=3, progress=False).ufc
        torch.testing.assert_close(together[s], alone[0], rtol=1e-4, atol=1e-5)


def test_class_batches_give_one_ufc_per_batch_of_classes():
    teacher = _teacher(classes=5)
    natural = (torch.rand(1, 5, 3, 16, 16) * 255).to(torch.uint8)
    cfg = SynthesisConfig(iterations=3, jitter=1, classes_per_ufc=2)  # batches {0,1}, {2,3}, {4}
    result = synthesize_ufcs([teacher], natural, [0], cfg, seed=0, progress=False)
    assert result.ufc.shape == (1, 1, 3, 3, 16, 16)
    assert class_batch_index(5, 2).tolist() == [0, 0, 1, 1, 2]
    # the last batch (one class) is optimised on its own: its loss is that class's loss alone
    assert result.final_loss.shape == (1, 1, 3)


def test_ufc_steps_are_taken_in_normalised_units_like_the_official_code():
    """Adam's first step moves every element by about lr; in pixels that is lr * std (official: normalised space)."""
    teacher = _teacher()
    natural = (64 + 128 * torch.rand(1, 5, 3, 16, 16)).to(torch.uint8)  # away from the clip bounds
    cfg = SynthesisConfig(iterations=1, lr=0.01, jitter=0)
    std = [0.2, 0.3, 0.4]
    ufc = synthesize_ufcs([teacher], natural, [0], cfg, seed=0, progress=False, pixel_std=std).ufc[0, 0, 0]
    moved = ufc.abs().flatten(1).max(1).values
    torch.testing.assert_close(moved, 0.01 * torch.tensor(std), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("reuse, needle", [(False, "BatchNorm layer 'spare' did not run"), (True, "BatchNorm layer 'bn' ran twice")])
def test_synthesis_refuses_a_teacher_whose_batchnorm_does_not_run_exactly_once(reuse, needle):
    teacher = OddBatchNorms(reuse=reuse).eval()
    natural = (torch.rand(1, 5, 3, 8, 8) * 255).to(torch.uint8)
    with pytest.raises(BatchNormUseError, match=needle):
        synthesize_ufcs([teacher], natural, [0], SynthesisConfig(iterations=2), seed=0, progress=False)
    assert all(not m._forward_hooks for m in teacher.modules())  # hooks gone after the error too


# ---- chunks: a shard's groups through a teacher in several forward passes --------------------


def _digits_shard(S: int) -> torch.Tensor:
    """S natural subsets of real digits (one image of every class each): uint8 [S, 10, 1, 8, 8]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images * (255.0 / 16.0)).round().to(torch.uint8)
    y = torch.from_numpy(digits.target)
    return torch.stack([torch.stack([x[(y == c).nonzero()[s, 0]] for c in range(10)]) for s in range(S)]).unsqueeze(2)


@pytest.mark.parametrize("kw", [dict(classes_per_ufc=4, jitter=2), dict(classes_per_ufc=4, jitter=0),
                                dict(classes_per_ufc=3, jitter=1, random_resized_crop=True), dict(jitter=2)])
def test_chunked_synthesis_equals_one_pass_synthesis_on_a_toy_shard(kw):
    """Whole UFC groups per chunk: every group's loss, BatchNorm statistics included, is over its own images."""
    teachers = [_teacher(chans=1, size=8, classes=10), _teacher("resnet_tiny", seed=1, chans=1, size=8, classes=10)]
    natural = _digits_shard(3)
    cfg = SynthesisConfig(iterations=3, **kw)
    group = kw.get("classes_per_ufc") or 10
    batches = []
    hooks = [t.register_forward_pre_hook(lambda _m, args: batches.append(len(args[0]))) for t in teachers]
    one_pass = synthesize_ufcs(teachers, natural, [0, 1, 2], cfg, seed=4, progress=False, pixel_std=[0.3])
    assert set(batches) == {30}                      # the default: the whole shard in one pass
    batches.clear()
    chunked = synthesize_ufcs(teachers, natural, [0, 1, 2], cfg.model_copy(update={"max_images_per_forward": group + 1}),
                              seed=4, progress=False, pixel_std=[0.3])
    for h in hooks:
        h.remove()
    assert max(batches) <= group + 1 and len(batches) > 2 * cfg.iterations  # several chunks per teacher and step
    torch.testing.assert_close(chunked.ufc, one_pass.ufc, rtol=0, atol=1e-5)
    for name in ("initial_loss", "final_loss", "final_ce", "final_bn"):
        torch.testing.assert_close(getattr(chunked, name), getattr(one_pass, name), rtol=1e-5, atol=1e-5)


def test_chunks_hold_whole_groups_in_order_and_a_group_larger_than_the_budget_is_refused():
    assert forward_chunks([4, 4, 2], 6) == [range(0, 1), range(1, 3)]
    assert forward_chunks([4, 4, 2], 10) == [range(0, 3)]
    assert forward_chunks([4, 4, 2], 4) == [range(0, 1), range(1, 2), range(2, 3)]
    check_forward_budget(10, SynthesisConfig(classes_per_ufc=4, max_images_per_forward=4))
    with pytest.raises(ConfigError, match="max_images_per_forward=4 is smaller than one UFC's group of 10 images"):
        check_forward_budget(10, SynthesisConfig(max_images_per_forward=4))
    with pytest.raises(ConfigError, match="lower synthesis.classes_per_ufc"):
        synthesize_ufcs([_teacher()], (torch.rand(1, 5, 3, 16, 16) * 255).to(torch.uint8), [0],
                        SynthesisConfig(iterations=1, classes_per_ufc=3, max_images_per_forward=2), seed=0, progress=False)


@pytest.mark.slow
def test_synthesize_ufc_refuses_a_budget_below_one_group_before_any_synthesis(tmp_path):
    from conftest import TINY

    from infer_distill import stages
    from infer_distill.config.loading import load_config
    from infer_distill.dag.layout import Layout

    cfg = load_config(None, TINY + ["teachers.archs=[resnet_tiny]", "synthesis.max_images_per_forward=9"])  # digits: 10 classes a UFC
    layout = Layout(str(tmp_path / "run"))
    stages.prepare_data(cfg, layout.data)
    stages.train_teacher(cfg, "resnet_tiny", layout.data, layout.teacher("resnet_tiny"), progress=False)
    stages.select_subsets(cfg, layout.data, layout.subsets)
    with pytest.raises(ConfigError, match="raise synthesis.max_images_per_forward to at least 10"):
        stages.synthesize_ufc(cfg, [0], layout.data, layout.subsets, layout.teachers(cfg), layout.ufc([0]), progress=False)
    assert not (tmp_path / "run" / "ufc").exists()
