"""The scale benchmark (benchmarks/scale.py): its growth arithmetic, and its quick grid end to end against S3."""
import json

import pytest

from benchmarks import scale
from infer_distill import dag
from tests.test_bench import _rendered


def _points(rule) -> list[dict]:
    """Made-up points at two sizes whose one stage's numbers follow `rule(N, C, B)` exactly."""
    points = []
    for size, grid in ((32, [(10, 50, 2), (100, 5, 2), (100, 50, 2), (1000, 5, 2), (100, 50, 10)]), (224, [(10, 5, 2), (10, 50, 2)])):
        for c, n, ipc in grid:
            x = {"images": c * (n + 5), "classes": c, "budget_images": c * ipc}
            value = rule(x["images"], x["classes"], x["budget_images"])
            points.append({"size": size, **x, "stages": {"soft-label": {"peak_rss_bytes": value, "read_bytes": 2 * value}}})
    return points


def test_the_fit_recovers_a_plane_and_leaves_out_what_the_points_do_not_vary():
    xs = [{"images": n, "classes": c, "budget_images": b} for n, c, b in [(100, 10, 20), (550, 10, 20), (1000, 100, 200),
                                                                          (5500, 100, 1000), (55000, 1000, 2000)]]
    f = scale.fit(xs, [7 + 3 * x["images"] + 11 * x["classes"] + 0.5 * x["budget_images"] for x in xs])
    assert f["intercept"] == pytest.approx(7) and f["dof"] == 1 and f["max_abs_residual"] < 1e-6
    assert f["slopes"] == pytest.approx({"images": 3, "classes": 11, "budget_images": 0.5})
    value, how = scale.extrapolate(f, {"images": 1_331_167, "classes": 1000, "budget_images": 10_000})
    assert value == pytest.approx(7 + 3 * 1_331_167 + 11 * 1000 + 0.5 * 10_000)
    assert how == "7 + 3 x 1,331,167 + 11 x 1,000 + 0.5 x 10,000"

    # C constant: it does not enter, and B = 2 C is no more than C: neither does it; the noisy one leaves a residual
    same_c = [{"images": n, "classes": 10, "budget_images": 20} for n in (100, 200, 400)]
    f = scale.fit(same_c, [1000, 1210, 1590])
    assert list(f["slopes"]) == ["images"] and f["dof"] == 1
    assert f["slopes"]["images"] == pytest.approx(137 / 70) and f["max_abs_residual"] == pytest.approx(60 / 7)
    f = scale.fit([{"images": 40 * c, "classes": c, "budget_images": 2 * c} for c in (4, 8)], [10, 18])
    assert f["slopes"] == pytest.approx({"images": 0.05}) and f["dof"] == 0
    assert scale.extrapolate(scale.fit([same_c[0]], [5.0]), same_c[0]) == (5.0, "5")
    with pytest.raises(ValueError):
        scale.fit([], [])


def test_growth_fits_each_size_apart_and_extrapolates_at_the_targets_size():
    result = scale.growth(_points(lambda n, c, b: 800e6 + 3000 * n + 20_000 * c + 1000 * b))
    assert set(result) == {"32", "224"}
    rss = result["32"]["soft-label"]["peak_rss_bytes"]
    assert rss["slopes"] == pytest.approx({"images": 3000, "classes": 20_000, "budget_images": 1000}) and rss["dof"] == 1
    assert "extrapolated" not in rss and result["32"]["soft-label"]["read_bytes"]["extrapolated"] == []  # targets: 224 px
    assert "extrapolated" not in result["224"]["soft-label"]["peak_rss_bytes"]  # memory is never extrapolated
    at_224 = result["224"]["soft-label"]
    assert list(at_224["read_bytes"]["slopes"]) == ["images"]  # C and B do not vary at 224 px here
    imagenet = {e["target"]: e["value"] for e in at_224["read_bytes"]["extrapolated"]}
    n = 1_281_167 + 50_000
    # 2 x (800e6 + 3000 N + 20,000 x 10 + 1000 x 20) along N alone, through both points
    assert imagenet["ImageNet-1k, ipc 10"] == pytest.approx(2 * (800e6 + 220_000 + 3000 * n))
    assert imagenet["ImageNet-1k, ipc 10"] == imagenet["ImageNet-1k, ipc 50"]  # B never varied: the fit cannot tell them apart
    assert scale.size(1_234_567) == "1.23 MB" and scale.size(-2500) == "-2.50 kB" and scale.size(12) == "12 B"
    assert scale.formula({"intercept": 8e8, "slopes": {"images": -3000.0, "classes": 2e4}}) == "800.00 MB - 3.00 kB x N + 20.00 kB x C"


def test_memory_is_compared_between_points_that_differ_in_one_setting_alone():
    def point(c, n, ipc):
        return {"classes": c, "per_class": n, "ipc": ipc}
    points = [point(10, 50, 2), point(100, 10, 2), point(10, 100, 2), point(10, 100, 10), point(100, 20, 2)]
    pairs = [(label, (a["classes"], a["per_class"], a["ipc"]), (b["classes"], b["per_class"], b["ipc"]))
             for label, a, b in scale.one_direction_pairs(points)]
    assert pairs == [("n 50 to 100 (C 10, ipc 2)", (10, 50, 2), (10, 100, 2)),
                     ("n 10 to 20 (C 100, ipc 2)", (100, 10, 2), (100, 20, 2)),
                     ("ipc 2 to 10 (C 10, n 100)", (10, 100, 2), (10, 100, 10))]


def test_the_imported_shape_imports_the_teacher_and_runs_infer_alone(tmp_path):
    point = scale.Point(4, 5, 16)
    weights = scale.teacher_weights(tmp_path / "t.safetensors", point)
    cfg = scale.point_config(point, tmp_path, imported=weights)
    assert cfg["teachers"]["pretrained"] == {scale.TEACHER: str(weights)} and cfg["methods"] == ["infer"]
    assert cfg["students"]["full_data_reference"] is False
    trained = scale.point_config(point, tmp_path)
    assert "pretrained" not in trained["teachers"] and trained["methods"] == ["infer", *scale.PEERS]
    from infer_distill.config.schema import Config

    Config.model_validate(cfg)  # a config the product takes


def test_points_parse_and_a_bad_one_is_refused():
    assert scale.parse_points("10:5:32,100:50:224:10") == (scale.Point(10, 5, 32), scale.Point(100, 50, 224, 10))
    assert scale.Point(100, 50, 224, 10).name == "c100-n50-224px-ipc10" and scale.Point(10, 5, 32).images == 100
    for bad in ("10:5", "10:x:32", "0:5:32", "1:2:3:4:5"):
        with pytest.raises(SystemExit, match="--points"):
            scale.parse_points(bad)


@pytest.mark.processes
def test_the_quick_grid_measures_every_stage_against_s3_and_renders_it(tmp_path):
    results = tmp_path / "results"
    assert scale.main(["--quick", "--results", str(results), "--work", str(tmp_path / "work")]) == 0
    result = json.loads((results / "scale-quick.json").read_text())
    assert result["unfinished"] == [] and [p["name"] for p in result["points"]] == [p.name for p in scale.QUICK_POINTS]
    for point in result["points"]:
        assert list(point["stages"]) == dag.STAGES  # every step of the plan, in its order
        written: set[str] = set()
        for item in point["items"]:
            assert item["exit_code"] == 0 and item["peak_rss_bytes"] > 0 and item["cpu_s"] > 0
            assert item["s3_written"], item["stage"]  # every step writes its artifact to S3
            # what a stage read, a stage before it wrote (or it is its own artifact's manifest, checked before writing)
            assert set(item["s3_read"]) <= written | set(item["s3_written"]), item["stage"]
            written |= set(item["s3_written"])
        for stage, totals in point["stages"].items():
            assert totals["read_bytes"] == sum(totals["read_by_file"].values())
            if stage != dag.PLAN[0].name:  # after prepare-data, every stage reads artifacts
                assert totals["read_bytes"] > 0, stage
    # the larger point read more, and the fit says so
    assert all(f["read_bytes"]["slopes"].get("images", 0) > 0 for f in result["growth"]["16"].values())
    md = _rendered(results, tmp_path / "BENCHMARKS.md", "# B\n<!-- results:begin (python -m benchmarks.report) -->\n<!-- results:end -->\n")
    section = md.split("## Scale", 1)[1]
    for stage in dag.STAGES:
        assert f"| {stage} |" in section, stage
    assert "### Growth at 16 px" in section and "### Peak RSS of one item (MB)" in section
