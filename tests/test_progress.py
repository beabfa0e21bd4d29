"""Progress in logs: plain lines (stage, step, loss, rate, ETA) when stderr is not a terminal."""
import re

import torch

from infer_distill.config.schema import TeacherConfig
from infer_distill.method.training import Held, train_teacher_model
from infer_distill.runtime.progress import LogLines, progress_bar

LINE = re.compile(r"^(?P<desc>.+): step (?P<step>\d+)/(?P<total>\d+) \(\d+%\), loss=[\d.]+, [\d.]+ step/s, ETA \w+$")


def test_redirected_progress_is_one_plain_line_per_interval(capsys, monkeypatch):
    monkeypatch.setenv("INFER_PROGRESS_INTERVAL", "0")  # every step gets its line
    bar = progress_bar(range(5), "teacher resnet_tiny")
    assert isinstance(bar, LogLines)  # pytest's captured stderr is not a terminal
    for i in bar:
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert [LINE.match(line)["step"] for line in lines] == ["1", "2", "3", "4", "5"]
    assert all(LINE.match(line)["desc"] == "teacher resnet_tiny" for line in lines)


def test_a_long_interval_prints_only_the_end(capsys, monkeypatch):
    monkeypatch.setenv("INFER_PROGRESS_INTERVAL", "3600")
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    x = torch.randint(0, 255, (12, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(12) % 3
    train_teacher_model(model, Held(x, y), TeacherConfig(epochs=4, batch_size=6), (1, False), "cpu", 0, desc="teacher tiny")
    (line,) = capsys.readouterr().err.splitlines()
    assert LINE.match(line) and line.startswith("teacher tiny: step 4/4 (100%), loss=")


def test_disabled_progress_prints_nothing(capsys):
    bar = progress_bar(range(3), "x", disable=True)
    for _ in bar:
        bar.set_postfix(loss="1")
    assert capsys.readouterr().err == ""
