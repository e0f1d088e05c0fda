"""What the report stage needs to know about the vision arm (pipeline.report never names an arm)."""
from __future__ import annotations

from pathlib import Path

from pipeline.report.arm import ArmReport, Plan
from pipeline.report.figures import image


def load_data(root: Path, info: dict, notes: list) -> dict:
    """The dataset facts evaluate_vision copied into eval.json from data/vision/<dataset>.json."""
    return {"meta": {"dataset": info.get("dataset"), **(info.get("data") or {})}}


REPORT = ArmReport(
    name="vision", title="Medical image classification", unit="image", group="image",
    keys=("dataset", "model", "regime", "loss"), template=Path(__file__).with_name("report.html"),
    question="should the pretrained backbone stay frozen or be fine-tuned, and does AlexNet or VGG16 transfer better?",
    plans=(Plan(fixed=("dataset", "model", "loss"), vary="regime"),
           Plan(fixed=("dataset", "regime", "loss"), vary="model", suffix=" (backbones compared)")),
    choice=("dataset",), load_data=load_data, render_error=lambda x, data, extra: (image(x), "image"),
    error_caption="Each picture is one test image the model got wrong.")
