"""What a resumed run may skip: an artifact with these settings, intact files, made from the inputs there now."""
from pathlib import Path

from conftest import TINY
from infer_distill import stages
from infer_distill.config import load_config
from infer_distill.stages import Layout, is_current
from infer_distill.store import open_artifact


def test_is_current_checks_settings_files_and_inputs(tmp_path):
    cfg = load_config(None, TINY)
    lay = Layout(str(tmp_path / "run"))
    stages.prepare_data(cfg, lay.data)
    stages.select_subsets(cfg, lay.data, lay.subsets)
    made_from = {"data": lay.data}
    assert is_current(lay.subsets, cfg, "select-subsets", made_from)
    assert is_current(lay.subsets, cfg, "select-subsets")  # None: the inputs the artifact records
    assert is_current(lay.subsets, cfg, "select-subsets", {**made_from, "teachers": [lay.data]})  # more than it used
    assert not is_current(lay.subsets, cfg, "select-subsets", {})  # an input it was made from is not named
    assert not is_current(lay.subsets, load_config(None, TINY + ["seed=1"]), "select-subsets", made_from)  # settings
    assert not is_current(lay.report, cfg, "report", {})  # nothing there

    # remaking the data (identical bytes, a new manifest) makes everything made from it stale
    stages.prepare_data(cfg, lay.data)
    assert is_current(lay.data, cfg, "prepare-data", {})
    assert not is_current(lay.subsets, cfg, "select-subsets", made_from)
    stages.select_subsets(cfg, lay.data, lay.subsets)
    assert is_current(lay.subsets, cfg, "select-subsets", made_from)

    # a flipped byte in any file
    path = Path(lay.subsets) / "subsets.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    assert not is_current(lay.subsets, cfg, "select-subsets", made_from)

    manifest = open_artifact(lay.subsets).read_manifest()
    assert manifest["inputs"] == made_from and set(manifest["input_digests"]) == {"data"}
