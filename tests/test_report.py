"""The report as a newcomer reads it: a headline first, spreads only where there are several seeds, captioned figures."""
import io
import re

import torch
from PIL import Image

from infer_distill.outputs.plots import ufc_examples_png
from infer_distill.outputs.report import html, markdown, pct, result_tables, summarise

BUDGET = {"ipc": 10, "num_subsets": 7, "num_classes": 10, "num_ufcs": 21, "num_instances": 280, "stored_bytes": 11592,
          "train_bytes": 91712, "compression_ratio": 11592 / 91712, "ufc_dtype": "uint8", "label_dtype": "float16"}


def _run(arch: str, seed: int, final: float, **extra) -> dict:
    return {"arch": arch, "seed": seed, "final_acc": final, "best_acc": final + 0.01, "best_epoch": 3,
            "curve": [(1, 0.5), (2, final)], **extra}


def _report(seeds: list[int]) -> dict:
    students = [_run("convnet", s, 0.95 + 0.01 * s, label_mode="static") for s in seeds]
    baselines = [_run("convnet", s, 0.93, baseline="random_soft", description="random real (14/class)", epochs=2, steps=6,
                      num_instances=140, stored_bytes=11760) for s in seeds]
    return summarise([{"arch": "convnet", "test_acc": 0.97}], BUDGET, students, {"prepare-data": 0.5}, baselines)


def _cells(report: dict) -> list[str]:
    return [cell for _, _, _, rows in result_tables(report) for row in rows for cell in row]


def test_one_seed_shows_the_value_alone_and_several_their_spread():
    one, two = _cells(_report([0])), _cells(_report([0, 1]))
    assert "95.00" in one and "+2.00" in one and not any("±" in c for c in one)
    assert "95.50 ± 0.71" in two and "+2.50 ± 0.71" in two
    assert pct(0.5, None) == "50.00" and pct(0.5, 0.0) == "50.00 ± 0.00"   # a measured zero spread is still shown


def test_the_headline_says_what_infer_bought_and_at_what_fraction_of_the_data():
    md = markdown(_report([0]))
    first = md.split("\n\n")[1]
    assert first == ("INFER's distilled set stores 11,592 bytes, 12.6 % of the 91,712 bytes of training images. On it, convnet "
                     "(static labels) reaches 95.00 % final-epoch test accuracy (1 seed): +2.00 points over random real "
                     "(14/class) (11,760 bytes).")


def test_the_page_puts_headline_and_curves_first_and_captions_every_figure():
    pngs = {"ufc_examples.png": b"\x89PNG-grid", "student_curves.png": b"\x89PNG-curves"}
    page = html(_report([0, 1]), pngs)
    headline, curves, table, grid = (page.index(s) for s in ("class='headline'", "<figure>", "<table>", "Subset 0 of the distilled set"))
    assert headline < curves < table < grid
    figures = re.findall(r"<figure><img alt=\"([^\"]+)\" src=\"data:image/png;base64,[^\"]+\"><figcaption>([^<]+)</figcaption></figure>", page)
    assert len(figures) == 2 and all(alt == caption for alt, caption in figures)
    assert figures[0][1].startswith("Test accuracy over the epochs")
    md = markdown(_report([0]))
    assert md.index("student_curves.png") < md.index("ufc_examples.png") and "*Subset 0 of the distilled set" in md


def test_the_example_grid_is_a_short_strip_with_classes_across():
    natural = torch.randint(0, 256, (2, 10, 1, 8, 8), dtype=torch.uint8)
    ufc = torch.zeros(2, 3, 1, 1, 8, 8)
    png = ufc_examples_png(natural, ufc, [str(c) for c in range(10)], ["a", "b", "c"], None)
    width, height = Image.open(io.BytesIO(png)).size
    assert height < width / 2, (width, height)
