#!/usr/bin/env python3
"""INFER on CIFAR-10 at the paper's scale, in one GPU device call of under 9 minutes.

The paper's CIFAR-10 setting (DESIGN.md 1): teachers ResNet-18 (CIFAR stem), MobileNetV2,
EfficientNet-B0, ShuffleNetV2 (M = 4); ResNet-18 student; ipc 10 (K = 7); UFC synthesis 1000
iterations, lr 0.25, r_bn 1, jitter 4; students 400 epochs with static labels and 80 with
dynamic labels, AdamW 1e-3, MixUp, KL at T = 30; three seeds. It runs through the same benchmark
code as `make bench` (benchmarks/run.py: the library's stages, every baseline of BENCHMARKS.md).

One device call has about 9 minutes, so the script measures the machine first and sizes the run
to fit, recording every deviation in the results (`plan.deviations`):
- Teachers train for as many epochs as fit (official teachers are trained for 200 epochs
  elsewhere and loaded): the planner gives them what the fixed-size parts leave, at most 200.
- Teacher batch 256 and peak lr 0.1 (SGD + Nesterov, one-cycle, label smoothing 0.1): ours.
- Synthesis 1000 iterations and the students' 400 / 80 epochs stay official unless even the
  smallest plan would leave the teachers under 5 epochs; then students go to 200 / 40.
- Test accuracy every 10 epochs (best-over-epochs is the best of those), on all 10,000 PNG test images.
- The planner picks the most complete set of methods (INFER, INFER+Dyn, random+soft, random+hard,
  no UFC, INFER M=1, in that priority) that leaves the teachers enough epochs, and sizes the teachers
  for it; the other methods run afterwards while time is left. A method whose predicted time no
  longer fits before the deadline is skipped and listed under `skipped` in the results.
- ipc 50 does not fit beside ipc 10 in one call (students alone: ~11,000 ResNet-18 steps per seed):
  run it as a second call with `--ipc 50` (teachers are retrained on the fresh machine).
- TF32 matmuls and cuDNN autotuning are on (`--no-tf32` for strict fp32).
- The training set is the JPEG copy (quality 75) of ../shared/datasets: accuracies run a little low.

Prepare here, once (copies the two CIFAR-10 .tar.gz archives, 39 MB, into .data/cifar10 and
downloads the wheels the device lacks into .whl: pydantic is not installed there):

    .venv/bin/python benchmarks/gpu/paper_cifar10.py --prepare

The device call (carry [".data", ".whl"], timeout_s 600):

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu/paper_cifar10.py --out $OUT

It installs the wheels into /tmp/site only if `import pydantic` fails, extracts the archives to
/tmp/cifar10, runs the library from src/ (no pip install of the project), and writes to $OUT:
cifar10-gpu-paper.json (copy it to benchmarks/results/ and run `python -m benchmarks.report`),
its accuracy and UFC plots, BENCHMARKS-gpu.md and log.txt. Results are saved after every method,
so a call cut short still returns what finished.

On CPU, `--tiny` runs the whole path at toy size (tests/test_benchmarks.py does).
"""
from __future__ import annotations

import argparse
import glob
import importlib
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STARTED = time.perf_counter()
ARCHIVES = ("cifar10-train-jpeg.tar.gz", "cifar10-test-png.tar.gz")
# What the device lacks (KINDS.md lists no pydantic there); versions as in this project's venv.
WHEELS = ("pydantic==2.14.4", "pydantic-core==2.50.5", "annotated-types==0.8.0", "typing-inspection==0.4.5",
          "typing-extensions==4.16.0")


def log(msg: str) -> None:
    line = f"[{time.perf_counter() - STARTED:6.1f}s] {msg}"
    print(line, file=sys.stderr, flush=True)
    if LOG_FILE:
        with open(LOG_FILE, "a") as f:
            f.write(line + "\n")


LOG_FILE: str | None = None


# ----------------------------------------------------------------------------------------
# Here: copy the archives and fetch the wheels. There: install the wheels, extract the data.
# ----------------------------------------------------------------------------------------


def prepare_here(datasets: Path) -> None:
    data = REPO / ".data" / "cifar10"
    data.mkdir(parents=True, exist_ok=True)
    for name in ARCHIVES:
        if not (data / name).is_file():
            shutil.copy2(datasets / name, data / name)
    whl = REPO / ".whl"
    whl.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "-d", str(whl)]
    for plat in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"):
        cmd += ["--platform", plat]
    subprocess.run(cmd + list(WHEELS), check=True)
    size = sum(f.stat().st_size for f in [*data.iterdir(), *whl.iterdir()]) / 2**20
    print(f"ready: {data} and {whl} ({size:.1f} MiB to carry; limit 64 MiB with the working tree)")
    print('device call: run(command="PYTHONUNBUFFERED=1 python3 benchmarks/gpu/paper_cifar10.py --out $OUT", '
          'carry=[".data", ".whl"], timeout_s=600)')


def ensure_packages(wheels: Path) -> None:
    """Install the carried wheels into /tmp/site if pydantic is missing (before torch imports typing_extensions)."""
    try:
        import pydantic  # noqa: F401
        return
    except ImportError:
        pass
    files = sorted(glob.glob(str(wheels / "*.whl")))
    if not files:
        sys.exit(f"pydantic is not installed and no wheels are in {wheels}: run `benchmarks/gpu/paper_cifar10.py --prepare` "
                 "here and carry .whl")
    site = "/tmp/site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", site, *files], check=True)
    sys.path.insert(0, site)
    importlib.invalidate_caches()
    for name in [m for m in sys.modules if m.split(".")[0] in ("typing_extensions", "pydantic", "pydantic_core")]:
        del sys.modules[name]
    log(f"installed {len(files)} wheels into {site}")


def dataset_folder(data: Path, work: Path) -> Path:
    """A folder the library reads: `data` itself if it holds train/ and test/ (or zips), else the archives extracted."""
    if (data / "train").is_dir() and (data / "test").is_dir() or list(data.glob("*.zip")):
        return data
    tars = [data / n for n in ARCHIVES if (data / n).is_file()] or sorted(data.glob("*.tar.gz"))
    if not tars:
        sys.exit(f"no CIFAR-10 data in {data}: expected {ARCHIVES} (run --prepare here and carry .data)")
    done = work / ".extracted"
    if not done.is_file():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        for t in tars:
            with tarfile.open(t) as tar:
                tar.extractall(work, filter="data")
        done.write_text("ok")
    log(f"data extracted to {work}")
    return work


# ----------------------------------------------------------------------------------------
# Calibration and the plan
# ----------------------------------------------------------------------------------------

TEACHERS = ("resnet18", "mobilenetv2", "efficientnet_b0", "shufflenetv2")
ORDER = ("infer", "infer_dyn", "random_soft", "random_hard", "no_ufc", "infer_m1")


def calibrate(device: str, dm: dict, tiny: bool, batch_teacher: int, batch_student: int, ks: dict) -> dict:
    """Seconds per step of every piece, measured on this machine with randomly initialised networks."""
    import torch
    import torch.nn.functional as F

    from infer_distill.config import SynthesisConfig
    from infer_distill.data import random_crop_flip
    from infer_distill.stages import build_model
    from infer_distill.synthesis import synthesize_ufcs
    from infer_distill.training import Ensemble, kd_loss, mixup

    m = dm["metrics"]
    C = m["num_classes"]

    def model(arch):
        return build_model(arch, dm).to(device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(fn, warm: int, n: int) -> float:
        for _ in range(warm):
            fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        return (time.perf_counter() - t0) / n

    warm, n = (1, 1) if tiny else (3, 8)
    bt, bs = (4, 4) if tiny else (batch_teacher, batch_student)
    eval_batch = 16 if tiny else 1000
    out: dict = {"teacher_step_s": {}, "teacher_eval_s_per_image": {}, "batch_teacher": bt, "batch_student": bs}
    teachers = {}
    for arch in TEACHERS:
        net = model(arch)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        x = torch.rand(bt, m["in_chans"], m["image_size"], m["image_size"], device=device)
        y = torch.randint(0, C, (bt,), device=device)

        def step():
            loss = F.cross_entropy(net(random_crop_flip(x, 4, True)), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()

        net.train()
        out["teacher_step_s"][arch] = timed(step, warm, n)
        net.eval()
        xe = torch.rand(eval_batch, m["in_chans"], m["image_size"], m["image_size"], device=device)
        with torch.no_grad():
            out["teacher_eval_s_per_image"][arch] = timed(lambda: net(xe).argmax(1).cpu(), 1, 2) / eval_batch
        teachers[arch] = net.requires_grad_(False)
    ens = Ensemble(list(teachers.values()))
    student = model("resnet18")
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.01)
    x = torch.rand(bs, m["in_chans"], m["image_size"], m["image_size"], device=device)
    z = torch.randn(bs, C, device=device)

    def student_step(dynamic: bool):
        xb = random_crop_flip(x, 4, True)
        perm = torch.randperm(bs, device=device)
        xb, zb = mixup(xb, z, 0.7, perm)
        if dynamic:
            with torch.no_grad():
                zb = ens(xb)
        loss = kd_loss(student(xb), zb, 30.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()

    student.train()
    out["student_step_s"] = {"static": timed(lambda: student_step(False), warm, n),
                             "dynamic": timed(lambda: student_step(True), warm, n)}
    student.eval()
    xe = torch.rand(eval_batch, m["in_chans"], m["image_size"], m["image_size"], device=device)
    with torch.no_grad():
        out["student_eval_s_per_image"] = timed(lambda: student(xe).argmax(1).cpu(), 1, 2) / eval_batch
    # synthesis: grouped over K subsets and all teachers; M = 1 (resnet18); one subset and one teacher
    syn = SynthesisConfig(iterations=1 if tiny else 3, jitter=4)
    out["synthesis_iter_s"] = {}
    for label, k, archs in (("main", ks["main"], TEACHERS), ("m1", ks["m1"], TEACHERS[:1]), ("single", 1, TEACHERS[:1])):
        nat = torch.randint(0, 256, (k, C, m["in_chans"], m["image_size"], m["image_size"]), dtype=torch.uint8)
        nets = [teachers[a] for a in archs]
        synthesize_ufcs(nets, nat, list(range(k)), syn.model_copy(update={"iterations": 1}), 0, device, False)  # warm-up
        r = synthesize_ufcs(nets, nat, list(range(k)), syn, 0, device, False)
        out["synthesis_iter_s"][label] = r.seconds / syn.iterations
    del teachers, ens, student
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


class CostModel:
    """Predicted seconds of every part of a plan, from the calibration (times a safety factor)."""

    def __init__(self, cal: dict, dm: dict, ks: dict, safety: float = 1.25):
        self.cal, self.safety = cal, safety
        self.n_train, self.n_test = dm["metrics"]["num_train"], dm["metrics"]["num_test"]
        self.C = dm["metrics"]["num_classes"]
        self.ks = ks

    def teacher_epoch(self, batch: int) -> float:
        return self.safety * sum(math.ceil(self.n_train / batch) * s for s in self.cal["teacher_step_s"].values())

    def teacher_evals(self) -> float:
        return self.safety * self.n_test * sum(self.cal["teacher_eval_s_per_image"].values())

    def _students(self, n: int, epochs: int, mode: str, seeds: int, eval_every: int, batch: int) -> float:
        evals = epochs // eval_every + (1 if epochs % eval_every else 0)
        per_seed = epochs * math.ceil(n / batch) * self.cal["student_step_s"][mode] + evals * self.n_test * self.cal["student_eval_s_per_image"]
        return self.safety * seeds * per_seed

    def method(self, name: str, ipc: int, p) -> float:
        K, K1, M = self.ks["main"], self.ks["m1"], len(p.teachers)
        b, e, ed, ev, s = p.student_batch_size, p.student_epochs, p.student_epochs_dynamic, p.eval_every, len(p.seeds)
        syn = self.cal["synthesis_iter_s"]
        if name == "synthesis":
            return self.safety * (p.synthesis_iterations * syn["main"] + 5.0)
        if name == "infer":
            return self._students(K * (M + 1) * self.C, e, "static", s, ev, b) + self.safety * 3.0
        if name == "infer_dyn":
            return self._students(K * (M + 1) * self.C, ed, "dynamic", s, ev, b)
        if name == "no_ufc":
            return self._students(K * self.C, e, "static", s, ev, b)
        if name in ("random_soft", "random_hard"):
            return self._students(ipc * self.C, e, "static", s, ev, b)
        if name == "infer_m1":
            return self.safety * (p.synthesis_iterations * syn["m1"] + 8.0) + self._students(K1 * 2 * self.C, e, "static", s, ev, b)
        if name == "speed":
            return self.safety * p.speed_iterations * (syn["main"] + K * M * syn["single"])
        return 0.0

    def after_teachers(self, p) -> float:
        """Everything after the teachers: synthesis, every method, analysis and the speed check."""
        total = self.method("synthesis", p.ipcs[0], p) + self.method("speed", p.ipcs[0], p) + 15.0
        return total + sum(self.method(m, ipc, p) for ipc in p.ipcs for m in p.methods)


def make_plan(base, cost: CostModel, left_s: float, max_epochs: int) -> tuple:
    """Teacher epochs for the most complete plan whose teachers still get that plan's minimum epochs.

    The plan's methods are its core; the profile keeps every requested method, and those beyond the
    core run afterwards only while the deadline allows (the estimates carry a safety factor, so
    there is often time left). Returns (profile, plan record).
    """
    candidates = [
        (ORDER, {}, 15),
        (("infer", "infer_dyn", "random_soft", "random_hard", "no_ufc"), {}, 12),
        (("infer", "infer_dyn", "random_soft", "random_hard"), {}, 10),
        (("infer", "infer_dyn"), {}, 5),
        (("infer", "infer_dyn"), {"student_epochs": 200, "student_epochs_dynamic": 40, "eval_every": 20}, 1),
    ]
    epoch_cost = cost.teacher_epoch(base.teacher_batch_size)
    tried = []
    for i, (methods, changes, min_epochs) in enumerate(candidates):
        core = base.replace(methods=tuple(m for m in ORDER if m in methods and m in base.methods), **changes)
        rest = cost.after_teachers(core) + cost.teacher_evals()
        epochs = int(max(0.0, left_s - rest) // max(epoch_cost, 1e-9))
        tried.append({"methods": list(core.methods), **changes, "predicted_rest_s": round(rest, 1), "teacher_epochs_that_fit": epochs})
        if epochs >= min(min_epochs, max_epochs) or i == len(candidates) - 1:
            epochs = max(1, min(epochs, max_epochs))
            profile = base.replace(teacher_epochs=epochs, **changes)
            return profile, {
                "core_methods": list(core.methods), "opportunistic_methods": [m for m in profile.methods if m not in core.methods],
                "teacher_epoch_s": round(epoch_cost, 2), "predicted_teachers_s": round(epochs * epoch_cost, 1),
                "predicted_rest_s": round(rest, 1), "time_left_at_plan_s": round(left_s, 1), "candidates_tried": tried}
    raise AssertionError("unreachable")


def deviations(p, official_methods: tuple, tf32: bool, tiny: bool) -> list[str]:
    out = ["--tiny: a CPU test of this script at toy size (12 training and 3 test images per class at 16 px, ipc 2); "
           "its numbers mean nothing"] if tiny else []
    out += [f"teachers trained {p.teacher_epochs} epochs here (official: 200, trained elsewhere), batch {p.teacher_batch_size}, "
           f"SGD lr {p.teacher_lr} one-cycle, label smoothing 0.1"]
    if p.student_epochs != 400 or p.student_epochs_dynamic != 80:
        out.append(f"students {p.student_epochs} epochs static / {p.student_epochs_dynamic} dynamic (official: 400 / 80)")
    if p.synthesis_iterations != 1000:
        out.append(f"synthesis {p.synthesis_iterations} iterations (official: 1000)")
    missing = [m for m in official_methods if m not in p.methods]
    if missing:
        out.append(f"not asked for in this call: {', '.join(missing)}")
    out.append(f"test accuracy every {p.eval_every} epochs; best-over-epochs is the best of those evaluations")
    if tf32:
        out.append("TF32 matmuls and convolutions (cuDNN autotuning on); --no-tf32 for strict fp32")
    if p.ipcs == (10,):
        out.append("ipc 50 is not run in this call (it does not fit beside ipc 10): a second call with --ipc 50")
    out.append("training images are the JPEG (quality 75) copy of CIFAR-10's training set; test images the lossless PNG copy")
    return out


# ----------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    global LOG_FILE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare", action="store_true", help="here: copy the archives into .data/cifar10, fetch wheels into .whl")
    ap.add_argument("--datasets", default=os.environ.get("INFER_DATASETS", str(REPO.parent / "shared" / "datasets")) + "/cifar10",
                    help="--prepare: the folder holding the CIFAR-10 .tar.gz archives")
    ap.add_argument("--data", default=str(REPO / ".data" / "cifar10"), help="the carried archives (or an extracted / zip folder)")
    ap.add_argument("--wheels", default=str(REPO / ".whl"))
    ap.add_argument("--work", default="/tmp/infer-gpu", help="extracted data and the run's artifacts (not returned)")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-out"), help="results, plots and log ($OUT on the device)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="wall-clock seconds for the whole script (device call: 9 min)")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--methods", nargs="+", choices=ORDER, help="only these methods (the planner still sizes the teachers)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--no-tf32", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="toy size, for testing this script on CPU")
    args = ap.parse_args(argv)
    if args.prepare:
        prepare_here(Path(args.datasets))
        return 0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    LOG_FILE = str(out / "log.txt")
    ensure_packages(Path(args.wheels))
    sys.path[:0] = [str(REPO / "src"), str(REPO)]  # the library from the checkout, and the benchmarks package

    import torch

    from benchmarks import report
    from benchmarks.profiles import Profile
    from benchmarks.run import Benchmark

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not args.no_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = device == "cuda"
    log(f"device {device}" + (f" ({torch.cuda.get_device_name(0)})" if device == "cuda" else "") + f", torch {torch.__version__}")
    work = Path(args.work)
    root = dataset_folder(Path(args.data), work / "cifar10")

    tiny = args.tiny
    # --tiny: a few images per class at 16 px, so the real architectures run in seconds on a CPU
    dataset = {"name": "imagefolder", "root": str(root)} | ({"train_per_class": 12, "test_per_class": 3, "image_size": 16} if tiny else {})
    ipc = 2 if tiny else args.ipc
    base = Profile(
        name="cifar10-gpu-paper",
        title="CIFAR-10, GPU, paper scale (ResNet-18-family teachers, ResNet-18 student)",
        command='run(command="PYTHONUNBUFFERED=1 python3 benchmarks/gpu/paper_cifar10.py --out $OUT", carry=[".data", ".whl"])',
        row_command='run(command="python3 benchmarks/gpu/paper_cifar10.py --out $OUT --methods {method} --ipc {ipc}", carry=[".data", ".whl"])',
        dataset=dataset, teachers=TEACHERS, teacher_epochs=1, teacher_batch_size=256, teacher_lr=0.1,
        student="resnet18", student_epochs=2 if tiny else 400, student_epochs_dynamic=1 if tiny else 80,
        eval_every=1 if tiny else 10, synthesis_iterations=2 if tiny else 1000, seeds=(0,) if tiny else tuple(args.seeds),
        ipcs=(ipc,), methods=tuple(args.methods or ORDER), speed_iterations=1 if tiny else 20, device=device,
    )
    bench = Benchmark(base, work / "runs", out, progress=False)
    bench.prepare()
    cfg = base.config(ipc)
    ks = {"main": cfg.num_subsets(bench.C), "m1": base.config(ipc, [base.m1]).num_subsets(bench.C)}
    log(f"data ready: {bench.dm['metrics']['num_train']} train, {bench.dm['metrics']['num_test']} test images; K = {ks}")
    t = time.perf_counter()
    cal = calibrate(device, bench.dm, tiny, base.teacher_batch_size, base.student_batch_size, ks)
    log(f"calibrated in {time.perf_counter() - t:.1f}s: {json.dumps(cal)}")
    cost = CostModel(cal, bench.dm, ks)
    left = args.budget_s - (time.perf_counter() - STARTED)
    profile, plan = make_plan(base.replace(methods=tuple(m for m in ORDER if m in base.methods)), cost, left, 1 if tiny else 200)
    tf32 = device == "cuda" and not args.no_tf32
    profile = profile.replace(notes=tuple(deviations(profile, base.methods, tf32, tiny)))
    plan |= {"calibration": cal, "deviations": list(profile.notes), "budget_s": args.budget_s, "tiny": tiny}
    bench.results["plan"] = plan
    bench.set_profile(profile)
    log(f"plan: teachers {profile.teacher_epochs} epochs, core {plan['core_methods']}, then while time is left "
        f"{plan['opportunistic_methods']}; predicted "
        f"{plan['predicted_teachers_s']:.0f}s teachers + {plan['predicted_rest_s']:.0f}s rest, {left:.0f}s left")
    bench.deadline = STARTED + args.budget_s - 10.0
    bench.estimate = lambda method, ipc_: cost.method(method, ipc_, bench.p)
    try:
        bench.run_after_data()
    finally:
        bench.results["plan"]["wall_s"] = round(time.perf_counter() - STARTED, 1)
        bench.save()
        report.main(["--results", str(out), "--out", str(out / "BENCHMARKS-gpu.md")])
        log(f"done in {time.perf_counter() - STARTED:.0f}s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
