"""The ingest benchmark (benchmarks/ingest.py): its trees, its fits, and its quick grid end to end."""
import json
import statistics

import pytest

from benchmarks import ingest, scale
from infer_distill.config.schema import DatasetConfig
from infer_distill.data.sources import open_source, source_digest
from infer_distill.runtime.threads import usable_cpus
from tests.test_bench import _rendered


def test_a_tree_has_the_files_and_classes_asked_for_in_imagenets_proportion(tmp_path):
    point = ingest.ListingPoint(600, 3)
    counts = ingest.build_tree(tmp_path / "tree", point)
    assert point.test_per_class == round(200 * 50_000 / 1_331_167) == 8
    assert counts == {"train_files": 3 * 192, "test_files": 3 * 8}
    assert (tmp_path / "tree/train/n00000002/n00000002_191.JPEG").stat().st_size == 0
    assert (tmp_path / "tree/test/n00000001/ILSVRC2012_val_000100007.JPEG").is_file()
    cfg = DatasetConfig(name="imagefolder", root=str(tmp_path / "tree"))
    with open_source(cfg) as source:  # what the meter measures lists every file
        assert source.classes == ["n00000000", "n00000001", "n00000002"]
        assert source.split("train").count + source.split("test").count == 600
    assert source_digest(cfg)["files"] == 600
    grown = ingest.ListingPoint(1500, 3)  # the same classes, more files in both splits: only the new files are made
    assert ingest.grows(point, grown) and grown.test_per_class == 19
    assert ingest.build_tree(tmp_path / "tree", grown, point) == {"train_files": 3 * 481, "test_files": 3 * 19}
    with open_source(cfg) as source:
        assert source.split("train").count == 3 * 481 and source.split("test").count == 3 * 19
    for smaller in (ingest.ListingPoint(300, 3), ingest.ListingPoint(1500, 5)):
        assert not ingest.grows(grown, smaller)
        with pytest.raises(ValueError, match="cannot grow"):
            ingest.build_tree(tmp_path / "tree", smaller, grown)
    assert ingest.ListingPoint(10, 10).test_per_class == 1  # a class must be in both splits
    for bad in (ingest.ListingPoint(601, 3), ingest.ListingPoint(10, 10)):
        with pytest.raises(SystemExit, match="N must be a multiple of C"):
            ingest.build_tree(tmp_path / bad.name, bad)


def test_the_fits_are_lines_through_the_points_medians():
    points = [{"files": n, "median": {call: {"wall_s": 0.02 + 8e-6 * n, "cpu_s": 0.01 + 7e-6 * n,
                                             "peak_increase_bytes": 4096 + 400 * n + (64 if n == 50_000 else 0),
                                             "retained_increase_bytes": 350 * n} for call in ingest.CALLS}}
              for n in (10_000, 50_000, 200_000)]
    fits = ingest.listing_fits(points)
    wall = fits["open"]["wall_s"]
    assert wall["slopes"]["files"] == pytest.approx(8e-6) and wall["intercept"] == pytest.approx(0.02) and wall["dof"] == 1
    assert wall["imagenet"]["value"] == pytest.approx(0.02 + 8e-6 * 1_331_167)
    assert wall["imagenet"]["arithmetic"] == "0.02 + 8e-06 x 1,331,167"
    peak = fits["digest"]["peak_increase_bytes"]
    assert peak["slopes"]["files"] == pytest.approx(400, abs=0.01) and peak["max_abs_residual"] > 30  # the 64 B off the line


@pytest.mark.processes
def test_the_quick_grid_measures_listing_and_decoding_and_renders_them(tmp_path, monkeypatch, datasets_dir):
    monkeypatch.setenv("INFER_DATASETS", str(datasets_dir))
    results, work = tmp_path / "results", tmp_path / "work"
    assert ingest.main(["--quick", "--results", str(results), "--work", str(work)]) == 0
    result = json.loads((results / "ingest-quick.json").read_text())
    assert result["schema"] == ingest.SCHEMA and result["unfinished"] == []
    assert set(result["load"]) == {"start", "end"} and result["machine"]["cpu_count"] and result["source"]["commit"]

    listing = result["listing"]
    assert [(p["files"], p["classes"]) for p in listing["points"]] == [(x.files, x.classes) for x in ingest.QUICK_LISTING]
    assert [p["grown_from"] for p in listing["points"]] == [None, "n200-c10", None]
    for p in listing["points"]:
        assert p["train_files"] + p["test_files"] == p["files"]
        for call in ingest.CALLS:
            runs = p["runs"][call]
            assert len(runs) == listing["repeats"] and all(r["files"] == p["files"] for r in runs)
            assert all(r["wall_s"] > 0 and r["rss_before_bytes"] > 0 and r["peak_increase_bytes"] >= 0 for r in runs)
            assert p["median"][call] == {k: statistics.median(r[k] for r in runs) for k in ingest.METRICS}
    xs = [{"files": p["files"]} for p in listing["points"]]
    for call in ingest.CALLS:  # every fit recomputed from the points' medians
        for metric in ingest.METRICS:
            recorded = listing["fits"][call][metric]
            f = scale.fit(xs, [p["median"][call][metric] for p in listing["points"]], ("files",))
            assert {k: recorded[k] for k in f} == f and recorded["dof"] == 1  # the same arithmetic on the same numbers
            assert recorded["imagenet"]["value"] == pytest.approx(f["intercept"] + f["slopes"]["files"] * 1_331_167)
    assert not (work / "tree").exists(), "a listing tree was left behind"

    decoding = result["decoding"]
    assert [d["name"] for d in decoding["sets"]] == [d.name for d in ingest.QUICK_DECODE]
    for d in decoding["sets"]:
        for mode, cores in (("one core", 1), ("all cores", usable_cpus())):
            for r in d["runs"][mode]:
                assert r["cores"] == cores and r["images"] == d["images"]
                assert r["images_per_s"] == pytest.approx(r["images"] / r["wall_s"], rel=1e-3)
        assert d["all_cores_per_core"] == pytest.approx(d["all_cores_images_per_s"] / d["all_cores"], abs=0.01)
        assert d["parallel_efficiency"] == pytest.approx(d["all_cores_per_core"] / d["one_core_images_per_s"], abs=1e-3)
        assert d["cores_used"] == {m: pytest.approx(statistics.median(r["cpu_s"] / r["wall_s"] for r in rs), abs=0.005)
                                   for m, rs in d["runs"].items()}
    jpeg, _, png = decoding["sets"]
    assert 60_000 < jpeg["mean_file_bytes"] < 150_000  # about ImageNet's mean JPEG
    assert png["mean_file_bytes"] < 4000  # CIFAR-10's 32 px PNGs
    assert not list(work.glob("decode-*")), "the decoded images were left behind"

    md = _rendered(results, tmp_path / "BENCHMARKS.md", "# B\n<!-- results:begin (python -m benchmarks.report) -->\n<!-- results:end -->\n")
    section = md.split("## Ingest", 1)[1]
    for p in listing["points"]:
        assert f"| {p['files']:,} | {p['classes']:,} | open |" in section and f"| {p['files']:,} | {p['classes']:,} | digest |" in section
    assert "extrapolated (not measured) to ImageNet-1k's 1,331,167 files" in section
    assert "The issue's estimate for `open_source` was 81 us and 576 B per file" in section
    assert "| ImageNet-like JPEG | 500x375 | 224 px" in section and "Extrapolated (not measured): decoding ImageNet-1k" in section
