from pathlib import Path

import pytest
import yaml

from infer_distill import dag
from infer_distill.config.budget import num_subsets
from infer_distill.config.loading import load_config, validate_config
from infer_distill.dag.steps import STAGES


@pytest.mark.parametrize(
    "ipc, teachers, classes, expected",
    [(10, 4, 10, 7), (10, 4, 100, 9), (50, 4, 100, 48), (50, 4, 10, 35), (10, 3, 1000, 9), (1, 3, 10, 0)],
)
def test_budget_matches_the_official_examples(ipc, teachers, classes, expected):
    k = num_subsets(ipc, teachers, classes)
    assert k == expected
    assert k * (classes + teachers) <= ipc * classes  # K * (1 + M/C) <= ipc, exactly


def test_budget_counts_one_ufc_per_class_batch():
    # 200 classes in batches of 100: 2 UFCs per (subset, teacher)
    assert num_subsets(50, 4, 200, class_batches=2) == 48
    cfg = validate_config({"budget": {"ipc": 50}, "synthesis": {"classes_per_ufc": 100},
                           "teachers": {"archs": ["resnet18", "mobilenetv2", "efficientnet_b0", "shufflenetv2"]}})
    assert cfg.class_batches(200) == 2 and cfg.num_subsets(200) == 48


def test_quickstart_file_is_the_embedded_default():
    assert load_config("configs/quickstart.yaml") == load_config(None)


def _keys(node: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in node.items():
        out.add(prefix + key)
        if isinstance(value, dict):
            out |= _keys(value, f"{prefix}{key}.")
    return out


def test_quickstart_file_lists_every_key():
    """Its header says so: a key missing there is a setting a newcomer cannot see."""
    written = _keys(yaml.safe_load(open("configs/quickstart.yaml")))
    every = _keys(load_config(None).model_dump(mode="json"))
    assert sorted(every - written) == [] and sorted(written - every) == []


SHIPPED = ["quickstart", "cifar10-ipc10", "cifar10-ipc50", "cifar100-ipc10", "cifar100-ipc50", "tiny-imagenet-ipc50",
           "imagenet-ipc10", "imagenet-ipc50"]


def test_every_shipped_config_is_tested():
    assert sorted(SHIPPED) == sorted(p.stem for p in Path("configs").glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED[1:])
def test_a_shipped_config_is_what_its_name_says(name):
    """cifar100-ipc50: CIFAR-100 at 50 images per class (and the quickstart: digits, the embedded defaults)."""
    cfg = load_config(f"configs/{name}.yaml")
    dataset, ipc = name.rsplit("-ipc", 1)
    assert (cfg.dataset.name.replace("_", "-"), cfg.budget.ipc) == (dataset, int(ipc))


def test_the_quickstart_file_is_the_embedded_default():
    assert load_config("configs/quickstart.yaml") == load_config(None)


def test_set_overrides_parse_yaml_scalars_and_lists():
    cfg = load_config(None, ["synthesis.iterations=7", "teachers.archs=[resnet_tiny, convnet_d2_w32]", "device=cpu",
                             "synthesis.r_bn=0.5"])
    assert cfg.synthesis.iterations == 7 and cfg.synthesis.r_bn == 0.5
    assert cfg.teachers.archs == ["resnet_tiny", "convnet_d2_w32"] and cfg.device == "cpu"


def test_stage_settings_are_cumulative_and_scoped():
    a = load_config(None)
    b = load_config(None, ["students.epochs=3"])
    c = load_config(None, ["teachers.epochs=3"])
    # student settings do not touch the teacher, UFC or label artifacts
    for stage, keys in [("train-teacher", {"arch": "resnet_tiny"}), ("synthesize-ufc", {"subset_ids": [0]}), ("soft-label", {})]:
        assert dag.settings(a, stage, **keys) == dag.settings(b, stage, **keys)
    # teacher settings flow into everything downstream of the teachers
    assert dag.settings(a, "select-subsets") == dag.settings(c, "select-subsets")
    assert dag.settings(a, "synthesize-ufc", subset_ids=[0]) != dag.settings(c, "synthesize-ufc", subset_ids=[0])
    assert dag.settings(a, "evaluate-student", arch="x", seed=0, label_mode="static") != \
        dag.settings(c, "evaluate-student", arch="x", seed=0, label_mode="static")


def test_placement_is_in_no_artifacts_settings():
    """Shard size and device decide where work runs, not what it computes: no artifact records them."""
    keys = {"train-teacher": {"arch": "resnet_tiny"}, "synthesize-ufc": {"subset_ids": [0, 1]},
            "evaluate-student": {"arch": "convnet_d3_w32", "seed": 0, "label_mode": "static"},
            "evaluate-baseline": {"arch": "convnet_d3_w32", "seed": 0, "baseline": "random_soft"},
            "distill-method": {"method": "rded"}, "evaluate-full-data": {"arch": "convnet_d3_w32"},
            "evaluate-method": {"method": "sre2l", "score": "hard", "protocol": "steps", "arch": "convnet_d3_w32", "seed": 0}}
    base = load_config(None, ["device=auto"])
    placed = load_config(None, ["synthesis.subsets_per_shard=2", "synthesis.max_images_per_forward=8", "device=cpu"])
    computed = load_config(None, ["synthesis.iterations=7"])
    for stage in STAGES:
        assert dag.settings(base, stage, **keys.get(stage, {})) == dag.settings(placed, stage, **keys.get(stage, {})), stage
    assert dag.settings(base, "synthesize-ufc", subset_ids=[0, 1]) != dag.settings(computed, "synthesize-ufc", subset_ids=[0, 1])


def test_shard_plan_covers_every_subset_once():
    cfg = load_config(None, ["synthesis.subsets_per_shard=3"])
    plan = cfg.shard_plan(10)  # K = 7
    assert plan == [[0, 1, 2], [3, 4, 5], [6]]
    assert load_config(None).shard_plan(10) == [list(range(7))]
