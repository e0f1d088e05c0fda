"""What the report stage needs to know about the vision arm (pipeline.report never names an arm)."""
from __future__ import annotations

from pathlib import Path

from pipeline.report.arm import ArmReport, Plan
from pipeline.report.figures import image
from pipeline.report.sections import Section


def load_data(root: Path, info: dict, notes: list) -> dict:
    """The dataset facts evaluate_vision copied into eval.json from data/vision/<dataset>.json."""
    return {"meta": {"dataset": info.get("dataset"), **(info.get("data") or {})}}


SECTIONS = (
    Section("vision-analysis", "Model analyses: robustness, top-k, Grad-CAM and capacity",
            "metrics/analysis/vision.json",
            "What the trained networks learned, read without retraining: test accuracy and AUC under Gaussian noise "
            "and Gaussian blur at rising severity (the same corrupted images for every run), the mean drops per "
            "backbone and regime, top-k accuracy of the multi-class runs, Grad-CAM maps of confident right and wrong "
            "test images, and parameters, FLOPs and dead ReLU units per network.",
            "the analyse_vision stage (python -m vision.analyse) has not been run.",
            kind="analysis", test_name="test", unit="image", run_metrics="metrics/vision",
            labels=(("noise", "Gaussian noise"), ("blur", "Gaussian blur"), ("gradcam", "Grad-CAM"),
                    ("noise_vs_blur", "noise vs blur"), ("n_test_images", "test images per dataset"),
                    ("corruptions", "corruptions"), ("map_side", "map side"), ("n_images", "images shown"),
                    ("centre_fraction_correct", "centre share, correct"), ("centre_fraction_wrong", "centre share, wrong"),
                    ("dead_units", "dead ReLU units"), ("topk", "top-k accuracy"), ("auc", "AUC"),
                    ("n_runs", "runs"), ("noise_accuracy_drop", "noise: accuracy drop"),
                    ("noise_auc_drop", "noise: AUC drop"), ("noise_accuracy_drop_by_severity", "noise: accuracy drop by severity"),
                    ("blur_accuracy_drop", "blur: accuracy drop"), ("blur_auc_drop", "blur: AUC drop"),
                    ("blur_accuracy_drop_by_severity", "blur: accuracy drop by severity")),
            figures=(("robustness", "artifacts/analysis/vision/robustness.png"),
                     ("gradcam", "artifacts/analysis/vision/gradcam/*.png")),
            parts=("readings", "robustness", "topk", "gradcam", "capacity")),
)


REPORT = ArmReport(
    name="vision", title="Medical image classification", unit="image", group="image",
    keys=("dataset", "model", "regime", "loss"), template=Path(__file__).with_name("report.html"),
    question="should the pretrained backbone stay frozen or be fine-tuned, and does AlexNet or VGG16 transfer better?",
    plans=(Plan(fixed=("dataset", "model", "loss"), vary="regime"),
           Plan(fixed=("dataset", "regime", "loss"), vary="model", suffix=" (backbones compared)")),
    choice=("dataset",), load_data=load_data, render_error=lambda x, data, extra: (image(x), "image"),
    error_caption="Each picture is one test image the model got wrong.", sections=SECTIONS)
