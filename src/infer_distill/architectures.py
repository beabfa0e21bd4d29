"""The architecture names a config may use, known without importing torch (`infer_distill.models` builds them).

Config validation checks `teachers.archs` and `students.archs` against `NAMES`, so `infer-distill
config` and `plan` refuse a misspelt architecture without loading torch. `models.register_model`
adds every architecture it registers, a user's own included; tests/test_models.py checks that
`BUILTIN` names exactly the builders models.py defines.
"""
from __future__ import annotations

BUILTIN = frozenset({
    "convnet_d2_w32", "convnet_d3_w32", "convnet_d2_w64", "convnet_d3_w64", "convnet_d3_w128", "convnet_d4_w128",
    "convnet_d3_w32_nonorm", "resnet_tiny", "resnet18", "resnet50", "mobilenetv2", "efficientnet_b0", "shufflenetv2",
})
NAMES: set[str] = set(BUILTIN)
