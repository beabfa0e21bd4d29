import random

import pytest
import torch

from infer_distill.config.schema import StudentConfig, TeacherConfig
from infer_distill.method.training import (
    Ensemble,
    Held,
    cross_entropy_step,
    kd_loss,
    mixup,
    student_optimizer,
    student_step,
    teacher_optimizer,
    train_student_hard,
    train_student_model,
    train_teacher_model,
)
from infer_distill.models.networks import create_model


def test_mixup_mixes_images_and_labels_with_the_same_lambda_and_permutation():
    x = torch.rand(6, 1, 4, 4)
    z = torch.randn(6, 3)
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    xm, zm = mixup(x, z, 0.3, perm)
    for i in range(6):
        torch.testing.assert_close(xm[i], 0.3 * x[i] + 0.7 * x[perm[i]])
        torch.testing.assert_close(zm[i], 0.3 * z[i] + 0.7 * z[perm[i]])


def test_kd_loss_is_zero_only_for_matching_logits_and_uses_temperature():
    z = torch.randn(4, 5)
    assert kd_loss(z, z, 30.0).abs() < 1e-7
    other = torch.randn(4, 5)
    assert kd_loss(other, z, 1.0) > kd_loss(other, z, 30.0) > 0


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of each row, written out: sum_c p_c (log p_c - log q_c)."""
    return (p * (p.log() - q.log())).sum(1)


def test_the_student_loss_is_kl_from_the_teachers_distribution_to_the_students():
    """docs/method.md, section 6: KL(softmax(z_teacher / T) || softmax(z_student / T)), the teachers' distribution the target."""
    gen = torch.Generator().manual_seed(0)
    z_student, z_teacher = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen) * 8  # a sharp teacher: KL is far from symmetric
    p_teacher, p_student = (z_teacher / 2.0).softmax(1), (z_student / 2.0).softmax(1)
    forward, reverse = _kl(p_teacher, p_student).mean(), _kl(p_student, p_teacher).mean()
    assert (forward - reverse).abs() > 0.1      # the two directions differ clearly on these logits
    torch.testing.assert_close(kd_loss(z_student, z_teacher, 2.0), forward)

    # and student_step hands the teachers' logits to it as the target: one step without MixUp or augmentation
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5))
    x = torch.rand(6, 1, 4, 4, generator=gen)
    with torch.no_grad():
        expected = _kl((z_teacher / 2.0).softmax(1), (model(x) / 2.0).softmax(1)).mean()
    loss = student_step(model, torch.optim.SGD(model.parameters(), lr=0.1), x, soft_logits=z_teacher, temperature=2.0,
                        mixup_alpha=0.0, augment=(0, False), generator=torch.Generator().manual_seed(1), rng=random.Random(1))
    torch.testing.assert_close(loss, expected)


def test_the_student_loss_has_no_t_squared_factor():
    """docs/method.md, section 6: no T^2 factor, so the gradient on the student's logits is (p_student - p_teacher) / (T B)."""
    gen = torch.Generator().manual_seed(2)
    z_student, z_teacher = torch.randn(8, 4, generator=gen).requires_grad_(), torch.randn(8, 4, generator=gen)
    T = 4.0
    kd_loss(z_student, z_teacher, T).backward()
    expected = ((z_student.detach() / T).softmax(1) - (z_teacher / T).softmax(1)) / (T * len(z_student))
    torch.testing.assert_close(z_student.grad, expected)


def test_ensemble_averages_teacher_logits_and_stays_frozen():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    ens = Ensemble([a, b])
    ens.train()
    x = torch.randn(5, 3)
    torch.testing.assert_close(ens(x), (a(x) + b(x)) / 2)
    assert not ens.training and not any(p.requires_grad for p in ens.parameters())


def test_hard_label_student_learns_with_plain_cross_entropy_and_is_reproducible():
    # Two classes told apart by brightness: plain CE must separate them, and a seed fixes the run.
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    x = (0.2 + 0.6 * y.view(-1, 1, 1, 1) + 0.05 * torch.rand(40, 1, 4, 4, generator=gen)).clamp(0, 1)
    test_x, test_y = (x * 255).to(torch.uint8), y
    cfg = StudentConfig(epochs=30, batch_size=16, lr=0.05, weight_decay=0.0, eval_every=10)

    def run():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
        return train_student_hard(model, x, y, Held(test_x, test_y), cfg, cfg.epochs, (0, False), "cpu", seed=3, progress=False)

    a, b = run(), run()
    assert [e for e, _ in a.curve] == [10, 20, 30]
    assert a.final_acc == 1.0 and a.losses[-1] < a.losses[0]
    assert a.curve == b.curve and a.losses == b.losses


def _student_data(n=24, classes=3, size=8):
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(n, 1, size, size, generator=gen)
    logits = torch.randn(n, classes, generator=gen)
    test_x = (torch.rand(6, 1, size, size, generator=gen) * 255).to(torch.uint8)
    return images, logits, test_x, torch.arange(6) % classes


def _net(classes=3, size=8):
    torch.manual_seed(0)
    return create_model("convnet_d2_w32", classes, in_chans=1, image_size=size)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_loop_of_student_steps_is_the_librarys_student_training():
    """What docs/method.md shows: the public step and optimiser reproduce train_student_model bit for bit."""
    images, logits, test_x, test_y = _student_data()
    cfg = StudentConfig(epochs=3, batch_size=10, eval_every=1)
    teacher = _net()
    for mode in ("static", "dynamic"):
        labels = {"soft_logits": logits} if mode == "static" else {"ensemble": Ensemble([teacher])}
        library = _net()
        train_student_model(library, images, labels.get("soft_logits"), labels.get("ensemble"), Held(test_x, test_y), cfg, 3, 4.0,
                            (1, True), "cpu", seed=7, progress=False)
        mine = _net()
        opt, sched = student_optimizer(mine, cfg, total_steps=3 * 3)
        gen, rng = torch.Generator().manual_seed(7), random.Random(7)
        for _ in range(3):
            mine.train()
            for idx in torch.randperm(len(images), generator=gen).split(cfg.batch_size):
                batch = {"soft_logits": logits[idx]} if mode == "static" else labels
                student_step(mine, opt, images[idx], **batch, temperature=4.0, mixup_alpha=cfg.mixup_alpha,
                             augment=(1, True), generator=gen, rng=rng)
                sched.step()
        assert _same_weights(library, mine), mode
        assert not _same_weights(library, _net())  # it trained


def test_a_loop_of_cross_entropy_steps_is_the_librarys_teacher_training():
    images, _, _, _ = _student_data()
    x = (images * 255).to(torch.uint8)
    y = torch.arange(len(x)) % 3
    cfg = TeacherConfig(epochs=2, batch_size=10)
    library = _net()
    train_teacher_model(library, Held(x, y), cfg, (1, True), "cpu", seed=5, progress=False)
    mine = _net()
    opt, sched = teacher_optimizer(mine, cfg, total_steps=2 * 3)
    gen = torch.Generator().manual_seed(5)
    for _ in range(2):
        mine.train()
        for idx in torch.randperm(len(x), generator=gen).split(cfg.batch_size):
            cross_entropy_step(mine, opt, x[idx].float() / 255.0, y[idx], augment=(1, True), generator=gen,
                               label_smoothing=cfg.label_smoothing)
            sched.step()
    assert _same_weights(library, mine) and not _same_weights(library, _net())


def test_student_step_needs_exactly_one_kind_of_label():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.rand(4, 1, 8, 8)
    for labels in ({}, {"soft_logits": torch.randn(4, 3), "ensemble": Ensemble([_net()])}):
        with pytest.raises(ValueError, match="exactly one of soft_logits"):
            student_step(model, opt, x, **labels, temperature=1.0, mixup_alpha=0.8, augment=(0, False),
                         generator=torch.Generator(), rng=random.Random(0))


def test_teacher_momentum_is_the_configs_at_every_step():
    cfg = TeacherConfig(momentum=0.7)
    opt, sched = teacher_optimizer(_net(), cfg, total_steps=10)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["momentum"])
        opt.step()
        sched.step()
    assert seen == [0.7] * 10 and opt.param_groups[0]["nesterov"]
