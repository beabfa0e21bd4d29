"""Synthesis memory against the number of classes: one pass over a shard against chunks of UFC groups.

    python -m benchmarks.synthesis_memory

One shard of one subset (one image per class, as the ImageNet configs shard), `classes_per_ufc`
100, a random-weight torchvision ResNet-18 teacher on random images, a few iterations, at
C = 100 and C = 1,000 classes, each way in a fresh process:

- one pass: `max_images_per_forward` = C, the whole shard through the teacher at once;
- chunks: `max_images_per_forward` = 100, one UFC group per forward pass.

Each process reads its peak resident memory (`resource.getrusage(RUSAGE_SELF).ru_maxrss`) after
building the teacher and the images and again after the synthesis; the difference is what the
synthesis added at its peak (the activations one backward keeps, mostly).

Beside them, what one image costs the ImageNet configs' teachers (random-weight torchvision
ResNet-18, MobileNetV2, EfficientNet-B0) at 224 px: the bytes of the tensors one forward pass
of the UFC loss saves for its backward (`torch.autograd.graph.saved_tensors_hooks`, each storage
counted once), per image of a batch of 2. Results: benchmarks/results/synthesis-memory.json.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from benchmarks.common import REPO, machine_info, source_info
from benchmarks.run import RESULTS, atomic_write, log

CLASSES = (100, 1000)
CLASSES_PER_UFC = 100


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(num_classes: int, max_images: int, image_size: int, iterations: int, seed: int) -> dict:
    """One case, in this process: what the synthesis of one shard adds to the peak resident memory."""
    import torch

    from infer_distill.config.schema import SynthesisConfig
    from infer_distill.method.synthesis import synthesize_ufcs
    from infer_distill.models.networks import create_model

    torch.manual_seed(seed)
    teacher = create_model("torchvision:resnet18", num_classes=num_classes, image_size=image_size).eval()
    natural = torch.randint(0, 256, (1, num_classes, 3, image_size, image_size), dtype=torch.uint8)
    cfg = SynthesisConfig(iterations=iterations, jitter=4, classes_per_ufc=CLASSES_PER_UFC, max_images_per_forward=max_images)
    before = peak_rss_mb()
    start = time.perf_counter()
    result = synthesize_ufcs([teacher], natural, [0], cfg, seed, progress=False)
    seconds = time.perf_counter() - start
    after = peak_rss_mb()
    return {"num_classes": num_classes, "max_images_per_forward": max_images, "ufc_shape": list(result.ufc.shape),
            "peak_rss_mb_before_synthesis": round(before, 1), "peak_rss_mb": round(after, 1),
            "synthesis_peak_mb": round(after - before, 1), "seconds": round(seconds, 2),
            "torch_threads": torch.get_num_threads()}


IMAGENET_TEACHERS = ("resnet18", "mobilenet_v2", "efficientnet_b0")


def saved_mb_per_image(arch: str, image_size: int = 224, batch: int = 2) -> float:
    """MB of the tensors one forward of the UFC loss saves for the backward, per image."""
    import torch
    import torchvision

    from infer_distill.method.synthesis import group_losses

    torch.manual_seed(0)
    teacher = getattr(torchvision.models, arch)(weights=None).eval().requires_grad_(False)
    x = torch.rand(batch, 3, image_size, image_size, requires_grad=True)
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        group_losses(teacher, x, torch.arange(batch), torch.zeros(batch, dtype=torch.long), 1, 0.01, 10.0)
    return round(sum(storages.values()) / batch / 1e6, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--case", nargs=2, type=int, metavar=("CLASSES", "MAX_IMAGES"), help=argparse.SUPPRESS)  # one case, in a child
    args = p.parse_args(argv)
    if args.case:
        print(json.dumps(measure(*args.case, args.image_size, args.iterations, args.seed)))
        return 0
    cases = []
    for num_classes in CLASSES:
        for way, max_images in (("one pass", num_classes), ("chunks", CLASSES_PER_UFC)):
            log(f"C = {num_classes}, {way} (max_images_per_forward = {max_images})")
            out = subprocess.run([sys.executable, "-m", "benchmarks.synthesis_memory", "--case", str(num_classes), str(max_images),
                                  "--image-size", str(args.image_size), "--iterations", str(args.iterations),
                                  "--seed", str(args.seed)], cwd=REPO, capture_output=True, text=True, check=True)
            case = {"way": way, **json.loads(out.stdout.strip().splitlines()[-1])}
            log(f"  synthesis peak {case['synthesis_peak_mb']} MB (process peak {case['peak_rss_mb']} MB), {case['seconds']} s")
            cases.append(case)
    saved = {arch: saved_mb_per_image(arch) for arch in IMAGENET_TEACHERS}
    log(f"saved for the backward per 224 px image: {saved} MB")
    by = {(c["way"], c["num_classes"]): c["synthesis_peak_mb"] for c in cases}
    results = {
        "benchmark": "synthesis-memory", "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m benchmarks.synthesis_memory" + "".join(
            f" --{k.replace('_', '-')} {v}" for k, v in (("image_size", args.image_size), ("iterations", args.iterations))
            if v != p.get_default(k)),
        "setup": {"teacher": "torchvision:resnet18, random weights", "subsets": 1, "classes_per_ufc": CLASSES_PER_UFC,
                  "image_size": args.image_size, "iterations": args.iterations, "jitter": 4, "images": "random uint8",
                  "measure": "ru_maxrss after the synthesis minus ru_maxrss before it, in a fresh process per case"},
        "cases": cases,
        "growth_c1000_over_c100": {way: round(by[(way, 1000)] / by[(way, 100)], 2) for way in ("one pass", "chunks")},
        "saved_for_backward_mb_per_224px_image": saved,
        "machine": machine_info("cpu"), "source": source_info(),
    }
    path = RESULTS / "synthesis-memory.json"
    atomic_write(path, json.dumps(results, indent=2) + "\n")
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
