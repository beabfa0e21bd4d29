import torch

from infer_distill.training import Ensemble, kd_loss, mixup


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


def test_ensemble_averages_teacher_logits_and_stays_frozen():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    ens = Ensemble([a, b])
    ens.train()
    x = torch.randn(5, 3)
    torch.testing.assert_close(ens(x), (a(x) + b(x)) / 2)
    assert not ens.training and not any(p.requires_grad for p in ens.parameters())


def test_hard_label_student_learns_with_plain_cross_entropy_and_is_reproducible():
    from infer_distill.config import StudentConfig
    from infer_distill.training import train_student_hard

    # Two classes told apart by brightness: plain CE must separate them, and a seed fixes the run.
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    x = (0.2 + 0.6 * y.view(-1, 1, 1, 1) + 0.05 * torch.rand(40, 1, 4, 4, generator=gen)).clamp(0, 1)
    test_x, test_y = (x * 255).to(torch.uint8), y
    cfg = StudentConfig(epochs=30, batch_size=16, lr=0.05, weight_decay=0.0, eval_every=10)

    def run():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
        return train_student_hard(model, x, y, test_x, test_y, cfg, cfg.epochs, (0, False), "cpu", seed=3, progress=False)

    a, b = run(), run()
    assert [e for e, _ in a.curve] == [10, 20, 30]
    assert a.final_acc == 1.0 and a.losses[-1] < a.losses[0]
    assert a.curve == b.curve and a.losses == b.losses
