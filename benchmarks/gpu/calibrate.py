"""Measure the machine before planning: seconds per step of every part, with the library's own steps.

Randomly initialised networks of the run's architectures, on random data of the run's shapes,
on the run's device and fast path (bf16 autocast and channels_last on CUDA for training; IEEE
fp32 for synthesis, labels and evaluation, as the stages run them): a few warm-up steps, then
timed steps between device synchronisations. The same process then runs the pipeline, so cuDNN's
autotuning done here is not paid again there.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable

import torch

from infer_distill.config import Config
from infer_distill.fast_path import PLAIN
from infer_distill.stages import build_model, compute_setup, ensemble_logits
from infer_distill.store import open_artifact
from infer_distill.synthesis import synthesize_ufcs
from infer_distill.training import Ensemble, cross_entropy_step, evaluate, student_optimizer, student_step, teacher_optimizer

STEP_OVERHEAD_S = 1.0   # per pipeline step besides reading the data: building models, writing the artifact


def sync(device: str) -> None:
    """Wait for the device's queued work, so a host clock read after it times the work."""
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object], device: str, warm: int, n: int) -> float:
    for _ in range(warm):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / n


def calibrate_pool(cfg: Config, data_uri: str, dm: dict, toy: bool, log: Callable[[str], None]) -> dict:
    """Teachers' and students' steps, evaluation and labelling for one data pool (its first profile's config)."""
    device, fast = compute_setup(cfg, trains=True)
    m = dm["metrics"]
    C, ch, size = m["num_classes"], m["in_chans"], m["image_size"]
    augment = (m["crop_padding"], m["hflip"])
    warm, n = (1, 2) if toy else (3, 8)
    n_eval = 64 if toy else 2000
    gen = torch.Generator().manual_seed(0)
    out: dict = {"device": device, "teacher_step_s": {}, "teacher_eval_s_per_image": {}, "warmup_steps": warm, "timed_steps": n}

    t0 = time.perf_counter()
    art = open_artifact(data_uri)
    art.read_tensors("train.safetensors"), art.read_tensors("test.safetensors")
    out["data_read_s"] = time.perf_counter() - t0
    out["step_overhead_s"] = out["data_read_s"] + (0.2 if toy else STEP_OVERHEAD_S)

    eval_x = torch.randint(0, 256, (n_eval, ch, size, size), dtype=torch.uint8)
    eval_y = torch.randint(0, C, (n_eval,))
    bt = cfg.teachers.batch_size
    teachers = []
    for arch in cfg.teachers.archs:
        torch.manual_seed(0)
        model = build_model(arch, dm)
        net = fast.for_training(model, device)
        opt, sched = teacher_optimizer(model, cfg.teachers, 10**6)
        x = torch.rand(bt, ch, size, size, device=device)
        y = torch.randint(0, C, (bt,), device=device)

        def step() -> None:
            cross_entropy_step(net, opt, x, y, augment=augment, generator=gen, label_smoothing=cfg.teachers.label_smoothing,
                               fast_path=fast)
            sched.step()

        model.train()
        out["teacher_step_s"][arch] = _timed(step, device, warm, n)
        fast.place(model, device)
        out["teacher_eval_s_per_image"][arch] = _timed(lambda: evaluate(model, eval_x, eval_y, device), device, 1, 1 if toy else 2) / n_eval
        teachers.append(model.eval().requires_grad_(False))
        del net, opt, sched, x, y
        log(f"  calibration: teacher {arch}: {out['teacher_step_s'][arch] * 1e3:.1f} ms per step of {bt}")

    bs = cfg.students.batch_size
    arch = cfg.students.archs[0]
    x = torch.rand(bs, ch, size, size, device=device)
    z = torch.randn(bs, C, device=device)
    rng = random.Random(0)
    common = {"temperature": cfg.labels.temperature, "mixup_alpha": cfg.students.mixup_alpha, "augment": augment,
              "generator": gen, "rng": rng}
    out["student_step_s"] = {}
    for kind in ("static", "dynamic", "plain"):
        path = PLAIN if kind == "plain" else fast
        torch.manual_seed(0)
        student = build_model(arch, dm)
        net = path.for_training(student, device)
        opt, _ = student_optimizer(student, cfg.students, 10**6)
        labels = {"ensemble": Ensemble(teachers)} if kind == "dynamic" else {"soft_logits": z}
        student.train()
        out["student_step_s"][kind] = _timed(lambda: student_step(net, opt, x, **labels, **common, fast_path=path), device, warm, n)
        if kind == "static":
            out["student_eval_s_per_image"] = _timed(lambda: evaluate(student, eval_x, eval_y, device), device, 1,
                                                     1 if toy else 2) / n_eval
        del net, opt, student
    log(f"  calibration: student {arch}: {out['student_step_s']['static'] * 1e3:.1f} ms per step of {bs} (static labels), "
        f"{out['student_step_s']['dynamic'] * 1e3:.1f} ms (dynamic), {out['student_step_s']['plain'] * 1e3:.1f} ms (baselines)")

    # the labelling stages run the teachers in plain fp32, NCHW
    plain_teachers = [t.to(memory_format=torch.contiguous_format) for t in teachers]
    images = eval_x.float() / 255.0
    ensemble = Ensemble(plain_teachers)
    out["label_s_per_image"] = _timed(lambda: ensemble_logits(ensemble, images, device), device, 1, 1 if toy else 2) / n_eval
    del ensemble, teachers
    _free(device)
    return {"calibration": out, "teachers": plain_teachers}


def calibrate_synthesis(cfg: Config, dm: dict, teachers: list[torch.nn.Module], K: int, toy: bool,
                        log: Callable[[str], None], label: str) -> dict:
    """One synthesis iteration grouped (K subsets x M teachers in one call) and one UFC at a time (each teacher)."""
    device, _ = compute_setup(cfg, trains=False)
    m = dm["metrics"]
    C, ch, size = m["num_classes"], m["in_chans"], m["image_size"]
    warm, n = (1, 2) if toy else (2, 5)
    natural = torch.randint(0, 256, (K, C, ch, size, size), dtype=torch.uint8)

    def per_iteration(models: list[torch.nn.Module], nat: torch.Tensor) -> tuple[float, float]:
        ids = list(range(len(nat)))
        synthesize_ufcs(models, nat, ids, cfg.synthesis.model_copy(update={"iterations": warm}), cfg.seed, device, False, m["std"])
        sync(device)
        t0 = time.perf_counter()
        r = synthesize_ufcs(models, nat, ids, cfg.synthesis.model_copy(update={"iterations": n}), cfg.seed, device, False, m["std"])
        sync(device)
        wall = time.perf_counter() - t0
        return r.seconds / n, max(0.0, wall - r.seconds)

    grouped, call = per_iteration(teachers, natural)
    single = {arch: per_iteration([t], natural[:1])[0] for arch, t in zip(cfg.teachers.archs, teachers)}
    log(f"  calibration: {label}: synthesis {grouped * 1e3:.1f} ms per grouped iteration ({K} subsets x {len(teachers)} teachers), "
        + ", ".join(f"{a} {s * 1e3:.1f} ms" for a, s in single.items()) + " per iteration of one UFC")
    _free(device)
    return {"synthesis_iter_s": grouped, "synthesis_call_s": call, "single_iter_s": single, "K": K,
            "warmup_iterations": warm, "timed_iterations": n}


def _free(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
