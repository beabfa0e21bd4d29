"""The fast path (fast_path.py): how it resolves, what it switches on CUDA, and that on the CPU it
either changes nothing (the default) or, asked for (bf16 autocast, channels_last), stays within
measured tolerances of the plain path."""
import copy
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from torch.utils._python_dispatch import TorchDispatchMode

from infer_distill import dag, stages
from infer_distill.cli import main
from infer_distill.config.loading import load_config
from infer_distill.dag.layout import Layout
from infer_distill.dag.steps import STAGES
from infer_distill.data.augment import augmentation, random_crop_flip
from infer_distill.data.sources import load_dataset
from infer_distill.data.splits import open_split
from infer_distill.engines.runner import plan_ufc_shards
from infer_distill.engines.walk import run_in_process
from infer_distill.errors import ConfigError
from infer_distill.method import synthesis
from infer_distill.method.synthesis import group_bn_loss, recorded_bn_inputs, synthesize_ufcs
from infer_distill.method.training import (
    Ensemble,
    Held,
    cross_entropy_step,
    evaluate,
    kd_loss,
    mixup,
    student_step,
    train_student_model,
    train_teacher_model,
)
from infer_distill.models.networks import batchnorm_layers, create_model
from infer_distill.outputs.instances import distilled_instances
from infer_distill.runtime.fast_path import PLAIN, CompileTime, FastPath, check_compile, resolve_fast_path
from infer_distill.stages.infer import ensemble_logits
from infer_distill.stages.inputs import build_model, cpu_weights
from infer_distill.storage import open_artifact

BF16_CL = FastPath(autocast=torch.bfloat16, channels_last=True)

# Tolerances of the fast path against the plain path on the digits case below (364 test images: one
# image is 0.27 points). Measured with `pytest tests/test_fast_path.py -m slow -s`, which prints them:
# - teachers (15 epochs): bf16 + channels_last moved test accuracy by -0.82 (convnet_d3_w32) and +1.10
#   points (resnet_tiny); three fp32 seeds of the quickstart's teachers spread over up to 2.20 points.
TEACHER_ACC_TOL = 0.025
# - students (mean of 2 seeds): bf16 + channels_last moved final accuracy by +1.10 points with static
#   labels (fp32 88.19, 88.74) and +0.27 with dynamic labels (fp32 77.47, 70.33: 7 points between seeds).
STUDENT_ACC_TOL = 0.03
# - UFC synthesis (200 iterations, one thread, the composed image clipped during the optimisation):
#   against fp32, fp32 with channels_last teachers moved the UFCs by 3.8e-3 on average (pixel units,
#   mean |U| 0.111), bf16 autocast by 1.30e-2 (3.4x), emulated TF32 by 2.21e-2 (5.8x): the reason
#   synthesis stays fp32, asserted as "more than twice the fp32 floor".
LOWER_PRECISION_OVER_FP32_FLOOR = 2.0


def _net(arch="convnet_d2_w32", classes=3, size=8, seed=0):
    torch.manual_seed(seed)
    return create_model(arch, classes, in_chans=1, image_size=size)


def _batch(n=12, classes=3, size=8):
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, size, size, generator=gen), torch.arange(n) % classes, torch.randn(n, classes, generator=gen)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------------------
# Resolution: what each setting means on each device
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [[], ["precision=auto"], ["precision=fp32"], ["channels_last=auto", "cudnn_benchmark=true"]])
def test_auto_and_fp32_resolve_to_the_plain_path_on_cpu(overrides):
    assert resolve_fast_path(load_config(None, overrides), "cpu") == PLAIN


def test_on_cpu_bf16_and_channels_last_only_when_asked_for():
    fast = resolve_fast_path(load_config(None, ["precision=bf16", "channels_last=true"]), "cpu")
    assert fast == FastPath(autocast=torch.bfloat16, channels_last=True)  # no cuDNN autotuning on a CPU


@pytest.fixture
def cuda_capability(monkeypatch):
    """Pretend the CUDA device does (True) or does not (False) have native bf16: the only thing resolution asks it."""
    def set_native_bf16(native: bool):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA A100-SXM4-80GB" if native else "Tesla V100-SXM2-16GB")
    return set_native_bf16


def test_on_cuda_the_fast_path_is_the_default_and_each_part_turns_off(cuda_capability):
    cuda_capability(True)
    cuda = lambda *over: resolve_fast_path(load_config(None, list(over)), "cuda")  # noqa: E731
    assert cuda() == FastPath(autocast=torch.bfloat16, channels_last=True, cudnn_benchmark=True)
    assert cuda("precision=fp32") == FastPath(autocast=None, channels_last=True, cudnn_benchmark=True)
    assert cuda("channels_last=false").channels_last is False
    assert cuda("cudnn_benchmark=false").cudnn_benchmark is False
    cuda_capability(False)  # a GPU without native bf16: auto falls back to fp32, an explicit bf16 is an error
    assert cuda().autocast is None
    with pytest.raises(ConfigError, match=r"precision: 'bf16'.*V100.*precision=auto"):
        cuda("precision=bf16")


def test_a_bad_precision_fails_in_preflight_before_any_artifact(cuda_capability, monkeypatch, tmp_path, capsys):
    cuda_capability(False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    code = main(["run", "--out", str(tmp_path / "run"), "--set", "device=cuda", "--set", "precision=bf16", "--no-progress"])
    assert code == 2 and "precision: 'bf16'" in capsys.readouterr().err
    assert not (tmp_path / "run" / "data").exists()


def test_unknown_precision_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match="precision"):
        load_config(None, ["precision=fp16"])


def test_fast_path_settings_are_in_no_artifacts_settings():
    """Like `device`, they change how a result is computed, not what: resuming on a GPU reuses CPU work and back."""
    keys = {"train-teacher": {"arch": "resnet_tiny"}, "synthesize-ufc": {"subset_ids": [0, 1]},
            "evaluate-student": {"arch": "convnet_d3_w32", "seed": 0, "label_mode": "static"},
            "evaluate-baseline": {"arch": "convnet_d3_w32", "seed": 0, "baseline": "random_soft"},
            "distill-method": {"method": "sre2l"}, "evaluate-full-data": {"arch": "convnet_d3_w32"},
            "evaluate-method": {"method": "rded", "score": "soft", "protocol": "epochs", "arch": "convnet_d3_w32", "seed": 0}}
    plain = load_config(None, ["precision=fp32", "channels_last=false", "cudnn_benchmark=false", "compile=false"])
    fast = load_config(None, ["precision=bf16", "channels_last=true", "cudnn_benchmark=true", "compile=true"])
    for stage in STAGES:
        assert dag.settings(plain, stage, **keys.get(stage, {})) == dag.settings(fast, stage, **keys.get(stage, {})), stage


@pytest.fixture
def cuda_switches():
    """Leave torch's process-wide cuDNN/TF32 switches as they were."""
    new_api = hasattr(torch.backends.cudnn, "conv")
    saved = (torch.backends.cudnn.benchmark, *((torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
                                              if new_api else (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)))
    yield new_api
    torch.backends.cudnn.benchmark = saved[0]
    if new_api:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = saved[1:]
    else:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved[1:]


def test_cuda_switches_autotune_as_asked_and_keep_fp32_ieee(cuda_switches):
    def set_tf32(on: bool) -> None:
        if cuda_switches:
            torch.backends.cudnn.conv.fp32_precision = torch.backends.cuda.matmul.fp32_precision = "tf32" if on else "ieee"
        else:
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = on

    def tf32() -> tuple:
        if cuda_switches:
            return torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
        return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32

    set_tf32(True)  # PyTorch's default for cuDNN convolutions
    FastPath(autocast=torch.bfloat16, channels_last=True, cudnn_benchmark=True).set_cuda_backends()
    assert torch.backends.cudnn.benchmark is True and tf32() in {("ieee", "ieee"), (False, False)}
    FastPath(cudnn_benchmark=False).set_cuda_backends()
    assert torch.backends.cudnn.benchmark is False


# ----------------------------------------------------------------------------------------
# The plain path is today's arithmetic, byte for byte
# ----------------------------------------------------------------------------------------


def _plain_cross_entropy_step(model, opt, images, labels, augment, generator, label_smoothing=0.0):
    """The step as it was before the fast path existed: the reference the CPU path must still match bit for bit."""
    x = random_crop_flip(images, *augment, generator=generator)
    loss = F.cross_entropy(model(x), labels, label_smoothing=label_smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _plain_student_step(model, opt, images, soft_logits, ensemble, temperature, mixup_alpha, augment, generator, rng):
    x = random_crop_flip(images, *augment, generator=generator)
    lam = rng.betavariate(mixup_alpha, mixup_alpha)
    perm = torch.randperm(len(x), generator=generator)
    if soft_logits is not None:
        x, z = mixup(x, soft_logits, lam, perm)
    else:
        x = lam * x + (1 - lam) * x[perm]
        with torch.no_grad():
            z = ensemble(x)
    loss = kd_loss(model(x), z, temperature)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


@pytest.mark.parametrize("recipe", ["cross-entropy", "static", "dynamic"])
def test_cpu_default_is_byte_identical_to_the_plain_steps(recipe):
    fast = resolve_fast_path(load_config(None, ["device=cpu"]), "cpu")  # precision auto on a CPU
    x, y, z = _batch()
    ensemble = Ensemble([_net(seed=5).eval()])
    ref, mine = _net(), fast.for_training(_net(), "cpu")
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (ref, mine)]
    gens = [torch.Generator().manual_seed(3) for _ in range(2)]
    rngs = [random.Random(3) for _ in range(2)]
    for _ in range(3):
        if recipe == "cross-entropy":
            _plain_cross_entropy_step(ref, opts[0], x, y, (1, True), gens[0], 0.1)
            cross_entropy_step(mine, opts[1], x, y, augment=(1, True), generator=gens[1], label_smoothing=0.1, fast_path=fast)
        else:
            labels = {"soft_logits": z, "ensemble": None} if recipe == "static" else {"soft_logits": None, "ensemble": ensemble}
            _plain_student_step(ref, opts[0], x, **labels, temperature=4.0, mixup_alpha=0.8, augment=(1, True),
                                generator=gens[0], rng=rngs[0])
            student_step(mine, opts[1], x, **labels, temperature=4.0, mixup_alpha=0.8, augment=(1, True),
                         generator=gens[1], rng=rngs[1], fast_path=fast)
    assert _same_weights(ref, mine) and not _same_weights(ref, _net())


# ----------------------------------------------------------------------------------------
# The fast path's code paths, exercised on the CPU (bf16 autocast and channels_last)
# ----------------------------------------------------------------------------------------


def test_bf16_autocast_runs_the_forward_in_bf16_and_keeps_fp32_weights_and_losses():
    model = BF16_CL.for_training(_net(), "cpu")
    conv = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]  # 32 channels in: the layouts differ
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    seen = []
    conv.register_forward_hook(lambda _m, _i, out: seen.append((out.dtype, out.is_contiguous(memory_format=torch.channels_last))))
    x, y, z = _batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen, rng = torch.Generator().manual_seed(0), random.Random(0)
    losses = [cross_entropy_step(model, opt, x, y, augment=(1, True), generator=gen, fast_path=BF16_CL),
              student_step(model, opt, x, soft_logits=z, temperature=4.0, mixup_alpha=0.8, augment=(1, True),
                           generator=gen, rng=rng, fast_path=BF16_CL),
              student_step(model, opt, x, ensemble=Ensemble([BF16_CL.place(_net(seed=5), "cpu")]), temperature=4.0,
                           mixup_alpha=0.8, augment=(1, True), generator=gen, rng=rng, fast_path=BF16_CL)]
    assert seen[:2] == [(torch.bfloat16, True)] * 2    # the student's convolutions: bf16, channels_last
    assert all(loss.dtype == torch.float32 for loss in losses)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights, and they moved
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_channels_last_weights_are_saved_in_the_usual_layout():
    model = BF16_CL.place(_net(), "cpu")
    state = cpu_weights(model)
    assert all(t.is_contiguous() for t in state.values())
    fresh = _net(seed=9)
    fresh.load_state_dict(state)
    assert _same_weights(fresh, _net())


def test_describe_records_the_resolved_settings():
    described = BF16_CL.describe("cpu", None, training=BF16_CL.training_precision, evaluation="fp32")
    assert described == {"device": "cpu", "precision": {"training": "bf16", "evaluation": "fp32"}, "channels_last": True,
                         "cudnn_benchmark": False, "compile": False, "compile_s": None}
    assert PLAIN.training_precision == "fp32"
    fp32_work = FastPath(torch.bfloat16, channels_last=True, cudnn_benchmark=True, compile=True).without_training()
    assert fp32_work == FastPath(cudnn_benchmark=True)  # synthesis and labels: autotuning, nothing else


# ----------------------------------------------------------------------------------------
# compile: refused with the reason where torch cannot compile, and timed where it can
# ----------------------------------------------------------------------------------------


def test_compile_is_refused_with_the_reason_where_torch_cannot_compile(monkeypatch):
    import importlib.util

    import torch._dynamo
    import torch._inductor.cpp_builder

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else find_spec(name, *a))
    with pytest.raises(ConfigError, match="compile: true on CUDA needs Triton"):
        check_compile("cuda")

    def no_compiler():
        raise RuntimeError("no working C++ compiler found in ('g++',)")

    monkeypatch.setattr(torch._inductor.cpp_builder, "get_cpp_compiler", no_compiler)
    with pytest.raises(ConfigError, match=r"compile: true on the CPU needs a C\+\+ compiler .*g\+\+.*compile=false"):
        check_compile("cpu")
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    with pytest.raises(ConfigError, match="compile: true, but torch .* cannot compile on Python"):
        resolve_fast_path(load_config(None, ["compile=true"]), "cpu")


def test_compile_time_is_none_unless_compiling():
    with CompileTime(False) as off:
        pass
    assert off.seconds is None


# ----------------------------------------------------------------------------------------
# The fast path against the plain path on a tiny real case (digits, CPU), within measured tolerances
# ----------------------------------------------------------------------------------------

class EmulatedTF32(TorchDispatchMode):
    """CUDA's TF32 on a CPU: every convolution and matmul, forward and backward, reads its fp32 operands
    cut to TF32's 10 mantissa bits (truncated: the worse of rounding and truncation) and accumulates in fp32."""

    OPS = {torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default, torch.ops.aten.mm.default,
           torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.OPS:
            args = tuple((a.view(torch.int32) & ~0x1FFF).view(torch.float32)
                         if isinstance(a, torch.Tensor) and a.dtype == torch.float32 else a for a in args)
        return func(*args, **(kwargs or {}))


DIGITS_TEACHERS = ["convnet_d3_w32", "resnet_tiny"]


class Digits:
    """The tiny real case: scikit-learn's digits (bundled, offline), the quickstart's teachers trained in
    plain fp32, and a distilled set made with them (2 subsets, UFCs after 200 iterations, static labels)."""

    def __init__(self) -> None:
        self.cfg = load_config(None, ["device=cpu", "synthesis.iterations=200", "students.batch_size=16", "students.epochs=100",
                                      "students.epochs_dynamic=40", "students.eval_every=1000"])
        self.data = load_dataset(self.cfg.dataset)
        self.augment = augmentation(self.cfg.dataset, self.data.image_size)
        first_two = torch.stack([torch.nonzero(self.data.train_y == c).flatten()[:2] for c in range(self.data.num_classes)], 1)
        self.natural = self.data.train_x[first_two]  # [2 subsets, 10 classes, 1, 8, 8]
        trained = {arch: self.train_teacher(arch, PLAIN) for arch in DIGITS_TEACHERS}
        self.teachers = [model for model, _ in trained.values()]
        self.teacher_acc = {arch: acc for arch, (_, acc) in trained.items()}
        self.ufc = self.synthesize(self.teachers)
        self.instances = distilled_instances(self.natural, self.ufc, None)
        self.soft_labels = ensemble_logits(Ensemble(self.teachers), self.instances, "cpu", self.cfg.teachers.batch_size)

    def train_teacher(self, arch: str, fast: FastPath) -> tuple[torch.nn.Module, float]:
        torch.manual_seed(self.cfg.seed)
        d = self.data
        model = create_model(arch, d.num_classes, d.in_chans, d.image_size, d.mean, d.std)
        train_teacher_model(model, Held(d.train_x, d.train_y), self.cfg.teachers, self.augment, "cpu", self.cfg.seed, progress=False,
                            fast_path=fast)
        return model.eval().requires_grad_(False), evaluate(model, Held(d.test_x, d.test_y), "cpu", self.cfg.teachers.batch_size)

    def synthesize(self, teachers: list[torch.nn.Module]) -> torch.Tensor:
        return synthesize_ufcs(teachers, self.natural, [0, 1], self.cfg.synthesis, self.cfg.seed, "cpu", False,
                               pixel_std=self.data.std).ufc

    def train_student(self, fast: FastPath, seed: int, label_mode: str) -> float:
        """Final test accuracy of a convnet_d3_w32 student; dynamic labels come from the teachers placed as `fast` says."""
        torch.manual_seed(seed)
        d = self.data
        model = create_model("convnet_d3_w32", d.num_classes, d.in_chans, d.image_size, d.mean, d.std)
        static = label_mode == "static"
        ensemble = None if static else Ensemble([fast.place(copy.deepcopy(t), "cpu") for t in self.teachers])
        result = train_student_model(model, self.instances, self.soft_labels if static else None, ensemble,
                                     Held(d.test_x, d.test_y), self.cfg.students, self.cfg.students.epochs_for(label_mode),
                                     self.cfg.labels.temperature, self.augment, "cpu", seed, progress=False, fast_path=fast)
        return result.final_acc


@pytest.fixture(scope="module")
def digits():
    # One thread, as the numbers above were measured: with two, fp32's own rounding order varies
    # with the machine's threads too, and the floor the tolerances compare with moves.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Digits()
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_bf16_channels_last_teachers_match_fp32_teachers_on_digits(digits):
    for arch in DIGITS_TEACHERS:
        _, fast = digits.train_teacher(arch, BF16_CL)
        print(f"teacher {arch}: test accuracy fp32 {digits.teacher_acc[arch]:.4f}, bf16 + channels_last {fast:.4f}")
        assert abs(fast - digits.teacher_acc[arch]) <= TEACHER_ACC_TOL, arch


def _bf16_group_losses(teacher, images, labels, group_ids, num_groups, r_bn, first_bn_multiplier):
    """synthesis.group_losses with the teacher's forward pass under bf16 autocast (the losses still in fp32)."""
    bn_layers = batchnorm_layers(teacher)
    with recorded_bn_inputs(teacher) as bn_inputs, torch.autocast("cpu", dtype=torch.bfloat16):
        logits = teacher(images)
    ce_per_sample = F.cross_entropy(logits.float(), labels, reduction="none")
    zeros = torch.zeros(num_groups)
    ce = zeros.index_add(0, group_ids, ce_per_sample) / zeros.index_add(0, group_ids, torch.ones_like(ce_per_sample))
    bn = group_bn_loss({layer: x.float() for layer, x in bn_inputs.items()}, bn_layers, group_ids, num_groups, first_bn_multiplier)
    return ce + r_bn * bn, ce, bn


@pytest.mark.slow
def test_synthesis_stays_fp32_because_bf16_and_tf32_move_ufcs_beyond_fp32_rounding(digits, monkeypatch):
    """Why synthesis is IEEE fp32 on every device (fast_path.py): the measurement, run on the tiny case.

    The UFC optimisation amplifies rounding differences, so fp32 synthesis with another rounding
    order (channels_last teachers) is the floor any device change meets. bf16 autocast and TF32
    (emulated) move the UFCs several times further than that; their final losses stay alike, so
    they find other UFCs of the same quality, not worse ones - but not the fp32 ones.
    """
    moved = {"fp32, channels_last": digits.synthesize([BF16_CL.place(copy.deepcopy(t), "cpu") for t in digits.teachers])}
    with EmulatedTF32():
        moved["tf32 (emulated)"] = digits.synthesize(digits.teachers)
    monkeypatch.setattr(synthesis, "group_losses", _bf16_group_losses)
    moved["bf16 autocast"] = digits.synthesize(digits.teachers)
    mean = {name: (ufc - digits.ufc).abs().mean().item() for name, ufc in moved.items()}
    for name, ufc in moved.items():
        print(f"UFCs, {name} vs fp32: mean |dU| {mean[name]:.2e}, max {(ufc - digits.ufc).abs().max():.2e} "
              f"(mean |U| {digits.ufc.abs().mean():.3f})")
    floor = mean["fp32, channels_last"]
    assert mean["tf32 (emulated)"] > LOWER_PRECISION_OVER_FP32_FLOOR * floor
    assert mean["bf16 autocast"] > LOWER_PRECISION_OVER_FP32_FLOOR * floor


@pytest.mark.slow
@pytest.mark.parametrize("label_mode", ["static", "dynamic"])
def test_bf16_channels_last_students_match_fp32_students_on_digits(digits, label_mode):
    plain = [digits.train_student(PLAIN, seed, label_mode) for seed in (0, 1)]
    fast = [digits.train_student(BF16_CL, seed, label_mode) for seed in (0, 1)]
    print(f"student, {label_mode} labels, final accuracy: fp32 {plain}, bf16 + channels_last {fast}")
    assert abs(sum(fast) / 2 - sum(plain) / 2) <= STUDENT_ACC_TOL


# ----------------------------------------------------------------------------------------
# Through the stages: what each manifest records, and the compile switch
# ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_on_the_cpu_fast_path_records_what_each_stage_computed_in(tmp_path):
    cfg = load_config("configs/quickstart.yaml", TINY + ["precision=bf16", "channels_last=true"])
    out = str(tmp_path / "run")
    run_in_process(cfg, out, progress=False)
    layout = Layout(out)
    common = {"device": "cpu", "channels_last": True, "cudnn_benchmark": False, "compile": False}

    def compute(uri):
        return open_artifact(uri).read_manifest()["metrics"]["compute"]

    fp32_work = {**common, "channels_last": False, "compile_s": None}
    for uri in layout.teachers(cfg):
        assert compute(uri) == {**common, "precision": {"training": "bf16", "evaluation": "fp32"}, "compile_s": None}
    ((ids, shard),) = plan_ufc_shards(cfg, layout, 10)
    assert compute(shard) == {**fp32_work, "precision": {"synthesis": "fp32"}}
    assert compute(layout.distilled) == {**fp32_work, "precision": {"labels": "fp32"}}
    # synthesis and labels are the plain path's, byte for byte, from the same teachers
    plain = load_config("configs/quickstart.yaml", TINY + ["precision=fp32"])
    inputs = (layout.data, layout.subsets, layout.teachers(cfg))
    stages.synthesize_ufc(plain, ids, *inputs, str(tmp_path / "plain-ufc"), progress=False)
    stages.soft_label(plain, *inputs, [shard], str(tmp_path / "plain-distilled"))
    for fast_uri, plain_uri, name in ((shard, tmp_path / "plain-ufc", "ufc.safetensors"),
                                      (layout.distilled, tmp_path / "plain-distilled", "distilled.safetensors")):
        assert open_artifact(fast_uri).read_bytes(name) == open_artifact(str(plain_uri)).read_bytes(name), name
    student = layout.student("convnet_d3_w32", 0, "static")
    assert compute(student) == {**common, "precision": {"training": "bf16", "evaluation": "fp32"}, "compile_s": None}
    # the stored weights (usual layout) are the trained student's: placed the same way, they score its accuracy
    dm = open_artifact(layout.data).read_manifest()
    model = BF16_CL.place(build_model("convnet_d3_w32", dm), "cpu")
    model.load_state_dict(open_artifact(student).read_tensors("weights.safetensors"))
    assert evaluate(model, open_split(open_artifact(layout.data), "test"), "cpu", cfg.students.batch_size) == open_artifact(student).read_manifest()["metrics"]["final_acc"]


@pytest.mark.slow
@pytest.mark.processes  # inductor compiles C++ with the system compiler
def test_the_compile_switch_trains_and_reports_its_compile_time(tmp_path):
    # 1437 digits training images in 3 batches of 479: one graph (and its backward) to compile
    sets = ["device=cpu", "teachers.archs=[convnet_d2_w32]", "teachers.epochs=2", "teachers.batch_size=479"]
    try:
        check_compile("cpu")
    except ConfigError as e:
        pytest.skip(str(e))
    data = str(tmp_path / "data")
    stages.prepare_data(load_config(None, sets), data)
    eager, compiled = (stages.train_teacher(load_config(None, sets + [f"compile={c}"]), "convnet_d2_w32", data,
                                            str(tmp_path / f"teacher-{c}"), progress=False)["metrics"] for c in ("false", "true"))
    print(f"compile_s {compiled['compute']['compile_s']}")
    assert eager["compute"]["compile_s"] is None
    assert compiled["compute"]["compile"] is True and compiled["compute"]["compile_s"] > 0
    # the same training: inductor's fused kernels round differently, nothing more
    torch.testing.assert_close(compiled["train_losses"], eager["train_losses"], rtol=1e-3, atol=0)
    weights = open_artifact(str(tmp_path / "teacher-true")).read_tensors("weights.safetensors")
    assert not any(k.startswith("_orig_mod") for k in weights)  # the module's own keys: loadable without torch.compile
