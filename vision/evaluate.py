"""Stage evaluate_vision: score one trained (dataset, model, regime, loss) on its test split
(pipeline.evaluate does the work).

The temperature is fitted on the validation split; the test split is used for nothing but scoring.
Each image is its own bootstrap group; every class is scored. The image limit is the one
train_vision recorded in train.json.
"""
from __future__ import annotations

import sys
from pathlib import Path

from pipeline import evaluate
from pipeline.evaluate import Adapter, Inputs, trained_fact
from vision import dataset

DATA_KEYS = ("dataset", "source", "image_size", "channels", "n", "n_per_class")
# The class of interest of two-class tasks (ROC, operating points, sensitivity banner); graded tasks.
POSITIVE = {"pneumoniamnist": "pneumonia", "breastmnist": "malignant"}
ORDINAL = {"retinamnist"}


def positive_class(name: str, classes: list) -> str | None:
    """The class of interest of a two-class dataset (the non-'normal' one when not listed)."""
    if len(classes) != 2:
        return None
    if POSITIVE.get(name) in classes:
        return POSITIVE[name]
    other = [c for c in classes if not str(c).lower().startswith("normal")]
    return other[0] if len(other) == 1 else classes[1]


def history(trained: dict) -> dict:
    """Per-epoch curves of both training phases ('head.loss', 'finetune.val_macro_f1', ...)."""
    return {f"{phase}.{k}": v for phase in ("head", "finetune") if isinstance(trained.get(phase), dict)
            for k, v in (trained[phase].get("history") or {}).items()}


def load(data_dir: Path, art_dir: Path, trained: dict) -> Inputs:
    from pipeline.training import predict_probs  # imports keras: only when a model is scored

    train_json = art_dir / "train.json"
    name = trained_fact(trained, "dataset", train_json)
    splits, meta = dataset.load(data_dir, name, trained_fact(trained, "limit", train_json))
    if trained_fact(trained, "data_sha256", train_json) != meta["sha256"]:
        raise ValueError(f"{train_json}: model was trained on other data than {data_dir / name}.npz; "
                         "rerun train_vision")
    val, test = splits["val"], splits["test"]
    classes = list(meta["class_names"])
    return Inputs(
        x=test.x, y=test.y, groups=test.index, classes=list(meta["class_names"]),
        scored=list(meta["class_names"]),
        validation=lambda model: (val.y, predict_probs(model, val.x, ADAPTER.batch_size)),
        errors=lambda idx: {"error_x": test.x[idx]},
        data={k: meta[k] for k in DATA_KEYS if k in meta},
        train={"history": history(trained), **{k: trained[k] for k in ("best_epoch", "epochs_run") if k in trained}},
        positive=positive_class(name, classes), ordinal=name in ORDINAL)


def register() -> None:
    from vision import layers  # noqa: F401  (registers the custom layers, so the saved model loads)


ADAPTER = Adapter(arm="vision", run_keys=("dataset", "model", "regime", "loss"), data_dir="data/vision",
                  split="test", selected_on="the validation split", load=load, auc=True, register=register)


def main(argv=None) -> int:
    return evaluate.main(ADAPTER, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
