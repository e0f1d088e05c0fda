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
    Section("vision-insight", "Model insight: label smoothing, large vs stacked kernels, leaky ReLU, first-layer filters",
            "metrics/analysis/insight_vision.json",
            "Small variants trained for one question each and read once on the test split: label smoothing against "
            "temperature scaling on a frozen-backbone head; AlexNet's 11x11 stride-4 first layer against a 7x7 + 5x5 "
            "stack with the same receptive field and stride; the same network with leaky ReLUs (units that never "
            "fire); and the first-layer filters of the pretrained, fine-tuned and from-scratch networks.",
            "the insight_vision stage (python -m vision.insight) has not been run.",
            kind="analysis", test_name="test", unit="image",
            labels=(("label_smoothing", "label smoothing: test calibration before/after temperature scaling"),
                    ("label_smoothing_vs_temperature", "label smoothing against temperature scaling (paired)"),
                    ("smoothing_training", "smoothing heads: training"),
                    ("kernels", "11x11/4 against 7x7 + 5x5 (from scratch)"),
                    ("kernels_difference", "stack minus 11x11 (paired)"),
                    ("leaky_relu", "ReLU against leaky ReLU (from scratch)"),
                    ("leaky_relu_difference", "leaky minus ReLU (paired)"),
                    ("dead_units", "units never positive on training images"),
                    ("filters", "first-layer filters"), ("ece", "ECE"), ("nll", "NLL"), ("auc", "AUC"),
                    ("macro_f1", "macro-F1"), ("smoothing_vs_temperature", "smoothing vs temperature scaling"),
                    ("smoothing_top1", "smoothing and top-1 calls")),
            figures=(("label_smoothing", "artifacts/analysis/insight_vision/smoothing_reliability.png"),
                     ("kernels", "artifacts/analysis/insight_vision/kernels_cost.png"),
                     ("dead_units", "artifacts/analysis/insight_vision/leaky_dead_units.png"),
                     ("filters", "artifacts/analysis/insight_vision/filters_*.png")),
            parts=("readings", "label_smoothing", "kernels", "leaky_relu", "dead_units", "filters")),
    Section("forgetting-vision", "Catastrophic forgetting: fine-tuning against the source task",
            "metrics/analysis/forgetting_vision.json",
            "How much of CIFAR-10 the CIFAR-pretrained backbone forgets when it is fine-tuned on the medical set, "
            "against what fine-tuning gains there. Each variant unfreezes the backbone from one block on and trains "
            "at one learning rate (same head, epochs and seed); 'frozen' is the head on the untouched backbone. "
            "Source accuracy is read by a linear probe on the backbone's pooled features: the probe fitted before "
            "fine-tuning ('old readout': what the old classifier still gets) and one re-fitted afterwards ('refit': "
            "what the representation still holds). Losses and gains are paired differences with 95% image-bootstrap CIs.",
            "the forgetting_vision stage (python -m vision.forgetting) has not been run.",
            kind="analysis", test_name="test", unit="image",
            labels=(("setting", "setting"), ("target", "medical set: validation and test scores"),
                    ("source", "source task (CIFAR-10 validation) through the linear probe"),
                    ("blocks_unfrozen", "blocks unfrozen"), ("learning_rate", "learning rate"),
                    ("best_epoch", "best epoch (val)"), ("val_macro_f1", "val macro-F1"),
                    ("val_macro_f1_gain", "val macro-F1 gain"), ("val_accuracy", "val accuracy"),
                    ("test_accuracy", "test accuracy"), ("test_macro_f1", "test macro-F1"),
                    ("test_accuracy_gain", "test accuracy gain"), ("test_macro_f1_gain", "test macro-F1 gain"),
                    ("accuracy_old_readout", "accuracy, old readout"), ("loss_old_readout", "loss, old readout"),
                    ("accuracy_refit", "accuracy, re-fitted probe"), ("loss_refit", "loss, re-fitted probe"),
                    ("probe_converged", "probe converged"), ("most_forgetting", "most forgetting"),
                    ("least_forgetting", "least forgetting"), ("what_drives_it", "learning rate vs depth"),
                    ("readout_vs_representation", "readout vs representation"),
                    ("gain_without_loss", "gain without loss?"), ("test_gain", "test gains")),
            figures=(("source", "artifacts/analysis/forgetting_vision/forgetting.png"),),
            parts=("readings", "target", "source")),
    Section("vision-goal", "Goal: every set ahead of the published 28 px tables (issue 12)",
            "metrics/analysis/goal_vision.json",
            "Per dataset and backbone family (ImageNet-pretrained squeezenet; AlexNet and VGG16 pretrained here on "
            "CIFAR-10) one run chosen on validation macro-F1 alone, then read once on test: accuracy and AUC with 95% "
            "image-bootstrap CIs against the best 28 px entry of the MedMNIST v2 / MedMNIST+ tables (above by point "
            "estimate, and with the CI's lower bound above). The ImageNet choice minus the CIFAR choice is a paired "
            "difference on the same resampled test images ('separates': its CI excludes 0). Last, squeezenet frozen "
            "against fine-tuned for each loss.",
            "the goal_vision stage (python -m vision.goal) has not been run.",
            kind="analysis", test_name="test", unit="image", run_metrics="metrics/vision",
            labels=(("setting", "setting"), ("goal", "goal: the run chosen on validation over both families"),
                    ("chosen", "chosen on validation, per family"), ("anchors", "each family's choice against the anchors"),
                    ("imagenet_vs_cifar", "ImageNet choice minus CIFAR choice (paired)"),
                    ("frozen_vs_finetune", "squeezenet: frozen against fine-tuned"),
                    ("goal_pneumoniamnist", "goal: PneumoniaMNIST"), ("goal_breastmnist", "goal: BreastMNIST"),
                    ("goal_retinamnist", "goal: RetinaMNIST"), ("intermediate_bar", "intermediate bar"),
                    ("missing", "missing"), ("runs_imagenet", "ImageNet runs"), ("runs_cifar", "CIFAR runs"),
                    ("runs_other_source", "runs of other sources"), ("regime_model", "frozen/fine-tuned backbone"),
                    ("candidates", "runs compared"), ("val_macro_f1", "val macro-F1"),
                    ("test_accuracy", "test accuracy"), ("test_auc", "test AUC"), ("test_macro_f1", "test macro-F1"),
                    ("anchor_accuracy", "anchor accuracy"), ("anchor_auc", "anchor AUC"),
                    ("beats_accuracy", "accuracy above anchor"), ("beats_auc", "AUC above anchor"),
                    ("ci_lo_above_accuracy", "accuracy CI above anchor"), ("ci_lo_above_auc", "AUC CI above anchor"),
                    ("beats_both", "goal met"), ("ci_lo_above_both", "goal met by CIs"),
                    ("anchor_source", "anchor from"), ("imagenet_run", "ImageNet run"), ("cifar_run", "CIFAR run"),
                    ("accuracy_diff", "accuracy difference"), ("auc_diff", "AUC difference"),
                    ("macro_f1_diff", "macro-F1 difference"), ("accuracy_call", "accuracy"), ("auc_call", "AUC"),
                    ("macro_f1_call", "macro-F1"), ("accuracy_gain", "accuracy: finetune - frozen"),
                    ("auc_gain", "AUC: finetune - frozen"), ("macro_f1_gain", "macro-F1: finetune - frozen"),
                    ("frozen_val_macro_f1", "frozen val macro-F1"), ("finetune_val_macro_f1", "fine-tuned val macro-F1"),
                    ("frozen_test_accuracy", "frozen test accuracy"), ("finetune_test_accuracy", "fine-tuned test accuracy"),
                    ("frozen_test_auc", "frozen test AUC"), ("finetune_test_auc", "fine-tuned test AUC"),
                    ("frozen_test_macro_f1", "frozen test macro-F1"),
                    ("finetune_test_macro_f1", "fine-tuned test macro-F1")),
            parts=("readings", "goal", "chosen", "anchors", "imagenet_vs_cifar", "frozen_vs_finetune")),
)


REPORT = ArmReport(
    name="vision", title="Medical image classification", unit="image", group="image",
    keys=("dataset", "model", "regime", "loss"), template=Path(__file__).with_name("report.html"),
    question="should the pretrained backbone stay frozen or be fine-tuned, and which backbone transfers best: AlexNet "
             "or VGG16 pretrained here on CIFAR-10, or SqueezeNet with its published ImageNet weights?",
    plans=(Plan(fixed=("dataset", "model", "loss"), vary="regime"),
           Plan(fixed=("dataset", "regime", "loss"), vary="model", suffix=" (backbones compared)")),
    choice=("dataset",), load_data=load_data, render_error=lambda x, data, extra: (image(x), "image"),
    error_caption="Each picture is one test image the model got wrong.", sections=SECTIONS)
