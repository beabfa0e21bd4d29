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
