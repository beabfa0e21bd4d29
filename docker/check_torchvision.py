"""Image build check: torch + torchvision import and run what infer-distill uses from them.

    python check_torchvision.py [--fix]

torchvision <= 0.29.1 registers fake kernels for `torchvision::nms` and `torchvision::qnms`
without checking that its C++ ops loaded (every other registration in the same file checks
`torchvision.extension._has_ops()`). PyPI's torchvision wheels link against CUDA torch, so
beside a CPU-only torch their ops cannot load and `import torchvision` fails with
"operator torchvision::nms does not exist". With --fix, and only on exactly that failure, the
two registrations get the same guard as the others. infer-distill uses no torchvision C++ op
(torchvision.models ResNet/ShuffleNetV2, torchvision.datasets CIFAR, transforms), which the
forward passes below confirm; torchvision.ops.nms & co. then raise torchvision's own
"Couldn't load custom C++ ops" error instead of breaking the import.
"""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

UNGUARDED = re.compile(r'^@torch\.library\.register_fake\("torchvision::(q?nms)"\)$', re.M)
GUARDED = r'@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda fn: fn))'

SMOKE = """
import torch, torchvision
from torchvision.models import resnet18, shufflenet_v2_x1_0
from torchvision.transforms.v2.functional import resized_crop
import torchvision.transforms.functional as TF
from torchvision.datasets import CIFAR10, CIFAR100  # noqa: F401
x = torch.rand(2, 3, 32, 32)
for net in (resnet18(num_classes=10), shufflenet_v2_x1_0(num_classes=10)):
    assert net.eval()(x).shape == (2, 10)
assert resized_crop(x, 2, 2, 20, 20, [32, 32]).shape == (2, 3, 32, 32)
assert TF.hflip(x).shape == x.shape
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), torchvision {torchvision.__version__}, "
      f"torchvision C++ ops {'loaded' if torchvision.extension._has_ops() else 'not loaded (unused here)'}")
"""


def smoke() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SMOKE], capture_output=True, text=True)


def main() -> int:
    first = smoke()
    if first.returncode == 0:
        print(first.stdout, end="")
        return 0
    if "--fix" not in sys.argv or "operator torchvision::nms does not exist" not in first.stderr:
        print(first.stdout + first.stderr, file=sys.stderr)
        return 1
    path = Path(importlib.util.find_spec("torchvision").submodule_search_locations[0]) / "_meta_registrations.py"
    text = path.read_text()
    fixed, count = UNGUARDED.subn(GUARDED, text)
    if count == 0:
        print(f"{path}: no unguarded nms/qnms registration to fix\n{first.stderr}", file=sys.stderr)
        return 1
    path.write_text(fixed)
    for cache in path.parent.glob(f"__pycache__/{path.stem}.*.pyc"):
        cache.unlink()
    print(f"guarded {count} fake-kernel registrations in {path} (torchvision's C++ ops do not load beside this torch)")
    second = smoke()
    print(second.stdout + second.stderr, end="", file=sys.stdout if second.returncode == 0 else sys.stderr)
    return second.returncode


if __name__ == "__main__":
    sys.exit(main())
