"""Byte-exact budgets: uint8 UFC storage, the distilled set's bytes, and the baselines' share of the same budget."""
import pytest
import torch

from infer_distill.config.loading import load_config
from infer_distill.method.synthesis import decode_ufc, encode_ufc


def test_uint8_ufc_round_trip_is_within_half_a_step():
    torch.manual_seed(0)
    ufc = torch.randn(4, 3, 2, 3, 8, 8) * 0.2                     # [K, M, B, ch, H, W]
    ufc[1, 2, 0] = 0.0                                           # a constant UFC
    stored = encode_ufc(ufc, "uint8")
    assert stored["ufc"].dtype == torch.uint8 and stored["ufc_scale"].shape == (4, 3, 2) == stored["ufc_offset"].shape
    decoded = decode_ufc(stored)
    step = stored["ufc_scale"][..., None, None, None]
    assert torch.all((decoded - ufc).abs() <= step / 2 + 1e-7)
    assert torch.equal(decoded[1, 2, 0], ufc[1, 2, 0])           # constant: exact
    # each UFC's own range: its min and max come back (up to float rounding)
    torch.testing.assert_close(decoded.flatten(-3).min(-1).values, ufc.flatten(-3).min(-1).values)
    torch.testing.assert_close(decoded.flatten(-3).max(-1).values, ufc.flatten(-3).max(-1).values)


@pytest.mark.parametrize("dtype, tol", [("float16", 1e-3), ("float32", 0.0)])
def test_float_ufc_storage(dtype, tol):
    ufc = torch.randn(2, 1, 1, 3, 4, 4)
    stored = encode_ufc(ufc, dtype)
    assert set(stored) == {"ufc"} and stored["ufc"].dtype == getattr(torch, dtype)
    torch.testing.assert_close(decode_ufc(stored), ufc, rtol=tol, atol=tol)


def test_stored_bytes_by_hand():
    # CIFAR-10 ipc 10, M = 1: K = floor(100 / 11) = 9 subsets; 3x32x32 images = 3,072 bytes
    cfg = load_config(None, ["teachers.archs=[convnet_d3_w32]"])
    natural, ufcs, labels = 9 * 10 * 3072, 9 * (3072 + 8), 9 * 2 * 10 * 10 * 2
    assert cfg.infer_stored_bytes(10, 3072) == natural + ufcs + labels == 307_800
    # ipc 10 real images per class with float16 labels: 100 * (3072 + 20) = 309,200 >= INFER: the baseline gets ipc
    assert cfg.baseline_per_class(10, 3072) == 10
    cfg32 = load_config(None, ["teachers.archs=[convnet_d3_w32]", "synthesis.ufc_dtype=float32", "labels.dtype=float32"])
    assert cfg32.infer_stored_bytes(10, 3072) == natural + 9 * 3072 * 4 + 9 * 2 * 10 * 10 * 4 == 394_272
    # float32 UFCs cost 4 images each: ceil(394,272 / (10 * (3072 + 40))) = 13 real images per class fit those bytes
    assert cfg32.baseline_per_class(10, 3072) == 13
    # 8x8 digits, M = 3: labels dominate (280 instances x 10 classes x 2 bytes), so the baseline gets more than ipc
    digits = load_config(None)
    assert digits.infer_stored_bytes(10, 64) == 7 * 10 * 64 + 21 * (64 + 8) + 7 * 4 * 10 * 10 * 2 == 11_592
    assert digits.baseline_per_class(10, 64) == 14                  # ceil(11,592 / (10 * (64 + 20)))


def test_the_baselines_schedule_by_hand():
    """INFER's static steps and the baselines' epochs: the same epochs (random_soft), or INFER's steps (random_soft_steps)."""
    cfg = load_config("configs/cifar10-ipc10.yaml")  # M = 4, K = 7: 350 instances, batch 64, 400 epochs
    assert cfg.infer_static_steps(10) == 400 * 6 == 2400
    assert cfg.baseline_epochs("random_soft", 100, 10) == 400
    assert cfg.baseline_epochs("random_soft_steps", 100, 10) == 2400 // 2 == 1200   # 100 images: 2 batches an epoch
    assert cfg.baseline_epochs("random_soft_steps", 150, 10) == round(2400 / 3) == 800
    assert cfg.baseline_epochs("random_soft_steps", 1_000_000, 10) == 1              # 15,625 batches: never under one epoch
