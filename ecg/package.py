"""A self-contained ECG beat-model package: the Keras model plus everything predict needs.

A package is a folder:

    model.keras     the trained model (the fold ensemble train_ecg saved), copied byte for byte
    package.json    format, rate, window, R-peak index, band-pass, RR features, channels, classes,
                    scored classes, temperature (fitted on the out-of-fold DS1 predictions), lead
                    order and provenance (run, data and model checksums, git revision)

Build one from a trained run:

    python -m ecg.package --run artifacts/ecg/<model>-<loss> --out <dir> [--meta data/ecg/meta.json]

`python -m ecg.predict RECORD --model <dir>` then needs nothing else. `log_mlflow(package_dir)` logs
the package as an MLflow pyfunc model (signature, input example, the project code it needs), so

    mlflow.pyfunc.load_model("runs:/<id>/package").predict({"beat": beats, "rr": rr})

works in a fresh Python process, returning calibrated class probabilities (n, 5).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.io import ensure_dir, file_digest, read_json, write_json

FORMAT = "ecg-beat-model"
VERSION = 1
MODEL_FILE, SPEC_FILE = "model.keras", "package.json"
# Keys predict reads; a package.json without one of them is not a usable package.
REQUIRED = ("fs", "window_samples", "r_peak_index", "bandpass_hz", "filter_order", "rr_features",
            "local_rr_beats", "channels", "classes", "score_classes", "temperature", "lead", "fallback_leads")
ROOT = Path(__file__).resolve().parents[1]


class PackageError(ValueError):
    """A folder is not a usable model package, or a run cannot be packaged; the message names the file."""


@contextlib.contextmanager
def atomic_dir(path: Path | str):
    """Yield a temporary folder beside `path`; it replaces `path` only when the block succeeds."""
    path = Path(path)
    ensure_dir(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            old = path.with_name(f".{path.name}.old.{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _data_facts(meta: dict, meta_path: Path, params_path: Path | str | None) -> dict:
    """filter_order, local_rr_beats and the lead order: meta.json if it holds them, else prepare's params."""
    facts = {k: meta[k] for k in ("filter_order", "local_rr_beats", "lead", "fallback_leads") if k in meta}
    missing = [k for k in ("filter_order", "local_rr_beats", "lead", "fallback_leads") if k not in facts]
    if missing:
        from ecg import config
        cfg = config.load(params_path or "params.yaml")
        # The params must describe the data meta.json describes, or the package would mix two preparations.
        for key, have in (("fs", cfg.fs), ("window_samples", 2 * cfg.half_window + 1),
                          ("bandpass_hz", list(cfg.bandpass_hz))):
            if meta[key] != have:
                raise PackageError(f"{meta_path}: {key}={meta[key]} but {params_path or 'params.yaml'} ecg_data gives "
                                   f"{have}; rerun prepare_ecg or pass the params it ran with")
        facts.update({k: v for k, v in (("filter_order", cfg.filter_order), ("local_rr_beats", cfg.local_rr_beats),
                                        ("lead", cfg.lead), ("fallback_leads", list(cfg.fallback_leads)))
                      if k in missing})
    return facts


def calibration_data(run_dir: Path, calibration: Path | str | None) -> tuple:
    """(y, probs, description) the temperature is fitted on.

    Without `calibration`: the run's own oof.npz (each DS1 beat predicted by the one fold model that did not see
    it). With `calibration` = replicate_ecg's folder: the mean, beat by beat, of the run's oof.npz and every
    seed<s>/oof.npz there (the same configuration with other seeds, the same folds): each DS1 beat predicted by
    an ensemble of fold models trained exactly like the packaged ensemble's members, none of which saw it. An
    average of fold models is less confident than one, so this is the kind of model packaged."""
    own = run_dir / "oof.npz"
    paths = [own]
    if calibration:
        folder = Path(calibration)
        if not (folder / "replicate.json").exists():
            raise PackageError(f"{folder / 'replicate.json'}: missing; run replicate_ecg first")
        ran = read_json(folder / "replicate.json").get("run")
        if ran != run_dir.name:
            raise PackageError(f"{folder / 'replicate.json'}: seeds of run {ran!r}, not of {run_dir.name}; "
                               "rerun replicate_ecg")
        paths += sorted(folder.glob("seed*/oof.npz"), key=lambda q: int(q.parent.name[4:]))
        if len(paths) == 1:
            raise PackageError(f"{folder}: no seed*/oof.npz; rerun replicate_ecg")
    for path in paths:
        if not path.exists():
            raise PackageError(f"{path}: missing; run {'train_ecg' if path == own else 'replicate_ecg'} first")
    y = record = None
    probs = []
    for path in paths:
        with np.load(path) as npz:
            if y is None:
                y, record = npz["y"], npz["record"] if "record" in npz.files else None
            elif not (np.array_equal(npz["y"], y) and (record is None or np.array_equal(npz["record"], record))):
                raise PackageError(f"{path}: not the same DS1 beats in the same order as {own}; rerun replicate_ecg")
            probs.append(npz["probs"])
    kind = (f"mean of {len(paths)} seeds' fold models, none of which saw the beat" if len(paths) > 1
            else "single fold models")
    return y, np.mean(probs, axis=0), f"{', '.join(map(str, paths))} (DS1 out-of-fold, {kind}, {len(y)} beats)"


def ece_bins(params_path) -> int:
    """evaluate.ece_bins of the params file (the bins of the ECE the temperature must lower); 15 without one."""
    from pipeline.params import ParamsError, read_params
    if not params_path:
        return 15
    bins = (read_params(params_path).get("evaluate") or {}).get("ece_bins", 15)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ParamsError(f"{params_path}: evaluate.ece_bins must be an integer >= 1, got {bins!r}")
    return bins


def build_package(run_dir: Path | str, meta_path: Path | str, out_dir: Path | str,
                  params_path: Path | str | None = None, calibration: Path | str | None = None,
                  ece_bins: int = 15) -> dict:
    """Package artifacts/ecg/<run>/{model.keras,train.json,oof.npz} with prepare's meta.json; returns package.json.

    The temperature is fitted on DS1 out-of-fold predictions (calibration_data: with `calibration`, replicate_ecg's
    folder, those of seed ensembles of fold models); it is kept only when it lowers their ECE (else 1)."""
    from pipeline.calibration import fit_temperature_no_worse

    run_dir, meta_path = Path(run_dir), Path(meta_path)
    for path in (run_dir / MODEL_FILE, run_dir / "train.json", run_dir / "oof.npz", meta_path):
        if not path.exists():
            raise PackageError(f"{path}: missing; run train_ecg (and prepare_ecg) first")
    trained, meta = read_json(run_dir / "train.json"), read_json(meta_path)
    for key in ("channels", "data_sha256"):
        if key not in trained:
            raise PackageError(f"{run_dir / 'train.json'}: no '{key}'; rerun train_ecg")
    for key in ("fs", "window_samples", "r_peak_index", "window_ms", "bandpass_hz", "rr_features", "classes",
                "score_classes"):
        if key not in meta:
            raise PackageError(f"{meta_path}: no '{key}'; rerun prepare_ecg")
    y_oof, p_oof, fitted_on = calibration_data(run_dir, calibration)
    if p_oof.ndim != 2 or p_oof.shape[1] != len(meta["classes"]):
        raise PackageError(f"{fitted_on.split(' (')[0]}: probs of shape {p_oof.shape} do not match the "
                           f"{len(meta['classes'])} classes of {meta_path}")
    temp = fit_temperature_no_worse(p_oof, y_oof, ece_bins)
    spec = {
        "format": FORMAT, "version": VERSION,
        "fs": int(meta["fs"]), "window_samples": int(meta["window_samples"]),
        "r_peak_index": int(meta["r_peak_index"]), "window_ms": float(meta["window_ms"]),
        "bandpass_hz": [float(b) for b in meta["bandpass_hz"]],
        **_data_facts(meta, meta_path, params_path),
        "rr_features": list(meta["rr_features"]), "channels": list(trained["channels"]),
        "classes": list(meta["classes"]), "score_classes": list(meta["score_classes"]),
        # Fitted on DS1 out-of-fold predictions only (never DS2); 1 when the fit does not lower their ECE.
        "temperature": temp["temperature"],
        "temperature_fitted_on": fitted_on,
        "calibration": {k: temp[k] for k in ("fitted", "kept", "ece_before", "ece_after")} | {"ece_bins": ece_bins},
        "provenance": {
            "run": run_dir.name, "model": trained.get("model"), "loss": trained.get("loss"),
            "mlflow_run_id": trained.get("mlflow_run_id"), "val_macro_f1": trained.get("val_macro_f1"),
            "database": meta.get("database"), "data_sha256": trained["data_sha256"],
            # Checksums only (no clock, no git state): the same run packs to the same bytes, so a DVC
            # stage that builds the package reproduces its recorded md5.
            "model_sha256": file_digest(run_dir / MODEL_FILE), "meta_sha256": file_digest(meta_path),
        },
    }
    with atomic_dir(out_dir) as tmp:
        shutil.copyfile(run_dir / MODEL_FILE, tmp / MODEL_FILE)
        write_json(tmp / SPEC_FILE, spec)
    return spec


@dataclass
class Package:
    path: Path
    spec: dict
    model: object  # keras.Model

    def predict(self, beat: np.ndarray, rr: np.ndarray, batch_size: int = 2048, calibrated: bool = True) -> np.ndarray:
        """Class probabilities (n, classes) for model inputs beat (n, L, C), rr (n, k); temperature-scaled
        unless `calibrated` is False (the model's own softmax)."""
        from pipeline.calibration import apply_temperature
        if len(beat) == 0:
            return np.zeros((0, len(self.spec["classes"])))
        probs = self.model.predict({"beat": np.asarray(beat, np.float32), "rr": np.asarray(rr, np.float32)},
                                   batch_size=batch_size, verbose=0)
        return apply_temperature(probs, self.spec["temperature"]) if calibrated else np.asarray(probs, np.float64)


def read_spec(path: Path | str) -> dict:
    """package.json of a package folder, checked; PackageError naming the folder or file otherwise."""
    path = Path(path)
    hint = "build one with `python -m ecg.package --run artifacts/ecg/<run> --out <dir>`"
    if not path.is_dir():
        raise PackageError(f"{path}: not a model package folder ({'a file' if path.exists() else 'missing'}); {hint}")
    spec_path = path / SPEC_FILE
    if not spec_path.exists():
        raise PackageError(f"{path}: not a model package (no {SPEC_FILE}); {hint}")
    try:
        spec = json.loads(spec_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PackageError(f"{spec_path}: malformed JSON ({exc}); {hint}") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise PackageError(f"{spec_path}: not an {FORMAT} package.json (format={spec.get('format') if isinstance(spec, dict) else None!r})")
    if spec.get("version") != VERSION:
        raise PackageError(f"{spec_path}: package version {spec.get('version')} unsupported (this code reads {VERSION})")
    missing = [k for k in REQUIRED if k not in spec]
    if missing:
        raise PackageError(f"{spec_path}: missing keys {missing}")
    if not (path / MODEL_FILE).is_file():
        raise PackageError(f"{path / MODEL_FILE}: missing from the model package")
    return spec


def load_package(path: Path | str) -> Package:
    """Read a package folder; the model is loaded without its training configuration."""
    spec = read_spec(path)
    import keras

    from ecg import models  # noqa: F401  (registers BeatAugment, a layer of the saved model)
    model_path = Path(path) / MODEL_FILE
    try:
        model = keras.saving.load_model(model_path, compile=False)
    except Exception as exc:  # keras raises assorted types on corrupt archives
        raise PackageError(f"{model_path}: cannot load the Keras model: {exc}") from None
    return Package(Path(path), spec, model)


def resolve(model: str) -> tuple[Path, str]:
    """A package folder, or an MLflow model URI (runs:/<id>/model, models:/...) logged by log_mlflow."""
    if "://" not in model and not model.startswith(("runs:", "models:")):
        return Path(model), str(Path(model).resolve())
    import mlflow
    from pipeline.tracking import tracking_uri
    mlflow.set_tracking_uri(tracking_uri())
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model))
    except Exception as exc:
        raise PackageError(f"{model}: cannot download the MLflow model: {exc}") from None
    pkg = local / "artifacts" / "package"
    if not pkg.is_dir():
        raise PackageError(f"{model}: not an ECG model package logged by ecg.package.log_mlflow "
                           f"(no artifacts/package in {local})")
    return pkg, model


# --- MLflow ---------------------------------------------------------------------------------------

def _beat_model_class():
    import mlflow.pyfunc

    class BeatModel(mlflow.pyfunc.PythonModel):
        """MLflow pyfunc wrapper of a package: input {"beat": (n, L, C), "rr": (n, k)}, output calibrated probs."""

        def load_context(self, context):
            self.package = load_package(context.artifacts["package"])

        def predict(self, context, model_input, params=None):
            if not isinstance(model_input, dict) or not {"beat", "rr"} <= set(model_input):
                raise TypeError("model input must be a dict {'beat': (n, L, C) float32, 'rr': (n, k) float32}")
            beat, rr = np.asarray(model_input["beat"], np.float32), np.asarray(model_input["rr"], np.float32)
            return self.package.predict(beat, rr).astype(np.float32)

    BeatModel.__module__, BeatModel.__qualname__ = __name__, "BeatModel"
    return BeatModel


def __getattr__(name):
    """`BeatModel` is made on first use, so importing this module (predict does) does not import MLflow."""
    if name == "BeatModel":
        if "BeatModel" not in globals():
            globals()["BeatModel"] = _beat_model_class()
        return globals()["BeatModel"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def input_example(spec: dict, n: int = 2) -> dict:
    rng = np.random.default_rng(0)
    return {"beat": rng.normal(0, 0.3, (n, spec["window_samples"], len(spec["channels"]))).astype(np.float32),
            "rr": np.ones((n, len(spec["rr_features"])), np.float32)}


def log_mlflow(package_dir: Path | str, name: str = "model") -> str:
    """Log a package as an MLflow pyfunc model in the active run (or a new one); returns the model URI.

    The project modules the wrapper imports travel in `code_paths`, so loading needs no project
    import first; the signature and input example describe the two tensors.
    """
    import mlflow
    from mlflow.models import infer_signature

    from pipeline.tracking import PIP_REQUIREMENTS
    spec = read_spec(package_dir)
    example = input_example(spec)
    out = np.full((len(example["rr"]), len(spec["classes"])), 1.0 / len(spec["classes"]), np.float32)
    signature = infer_signature(example, out)
    started = mlflow.active_run() is None
    if started:
        mlflow.start_run(run_name=f"package {spec['provenance'].get('run', '')}".strip())
    try:
        info = mlflow.pyfunc.log_model(
            name=name, python_model=__getattr__("BeatModel")(), artifacts={"package": str(Path(package_dir).resolve())},
            code_paths=[str(ROOT / "ecg"), str(ROOT / "pipeline")], signature=signature, input_example=example,
            pip_requirements=[*PIP_REQUIREMENTS, "scipy", "wfdb"])
        mlflow.log_dict(spec, "package.json")
        return info.model_uri
    finally:
        if started:
            mlflow.end_run()


def select_run(runs) -> Path:
    """Of several trained runs, the one with the best out-of-fold DS1 macro-F1 (selection never sees DS2)."""
    scored = []
    for run in map(Path, runs):
        trained = read_json(run / "train.json")
        if trained.get("val_macro_f1") is None:
            raise PackageError(f"{run / 'train.json'}: no val_macro_f1 to select on; rerun train_ecg")
        scored.append((float(trained["val_macro_f1"]), str(run)))
    return Path(max(scored)[1])


@dataclass(frozen=True)
class PackageParams:
    """params.yaml `package_ecg`: the trained run (artifacts/ecg/<run>) that becomes the model package."""
    run: str

    def validate(self) -> None:
        from pipeline.params import ParamsError
        if not self.run or "/" in self.run or self.run.startswith("."):
            raise ParamsError(f"run must be a run folder name under artifacts/ecg, got {self.run!r}")


def load_params(path) -> PackageParams:
    from pipeline.params import load_section
    return load_section("package_ecg", PackageParams, path)


def check_best(run: Path, runs_root: Path) -> dict:
    """Refuse `run` unless its DS1 out-of-fold macro-F1 is the best of every run under `runs_root`.

    Honest selection: the packaged model is the one the DS1 cross-validation picked; a DS2 figure
    never enters. Returns {run name: val_macro_f1} of every run compared.
    """
    scores = {}
    for path in sorted(Path(runs_root).glob("*/train.json")):
        trained = read_json(path)
        if trained.get("val_macro_f1") is not None:
            scores[path.parent.name] = float(trained["val_macro_f1"])
    own = Path(run) / "train.json"
    if not own.exists():
        raise PackageError(f"{own}: missing; run train_ecg first")
    if Path(run).name not in scores:
        raise PackageError(f"{own}: no val_macro_f1 (DS1 out-of-fold macro-F1) to check the selection on; rerun train_ecg")
    best = max(scores, key=lambda k: (scores[k], k == Path(run).name))
    if scores[best] > scores[Path(run).name]:
        raise PackageError(
            f"package_ecg.run={Path(run).name}: its DS1 out-of-fold macro-F1 {scores[Path(run).name]:.4f} "
            f"({own}) is not the best; {best} has {scores[best]:.4f} ({Path(runs_root) / best / 'train.json'}). "
            f"Package the best run (selection on DS1 only, never DS2)")
    return scores


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", nargs="+", default=None,
                    help="trained run folder(s), e.g. artifacts/ecg/lenet1d-ce; of several, the one with the "
                         "best DS1 out-of-fold macro-F1 (train.json val_macro_f1) is packaged, never a DS2 figure")
    ap.add_argument("--params", default=None,
                    help="params file: without --run, its `package_ecg.run` names the run under --runs-root (refused "
                         "unless it has the best DS1 out-of-fold macro-F1 there); also read for ecg_data keys "
                         "meta.json lacks")
    ap.add_argument("--runs-root", default="artifacts/ecg", help="folder of the trained runs (with --params)")
    ap.add_argument("--meta", default="data/ecg/meta.json", help="prepare_ecg's meta.json")
    ap.add_argument("--out", required=True, help="package folder to write (replaced atomically)")
    ap.add_argument("--calibration", default=None,
                    help="replicate_ecg's folder: fit the temperature on the mean of the run's and every seed's "
                         "out-of-fold predictions (ensembles of fold models, the kind of model packaged); default: "
                         "the run's single-model oof.npz")
    ap.add_argument("--mlflow", action="store_true",
                    help="also log the package as an MLflow pyfunc model named 'package' in the training run")
    args = ap.parse_args(argv)
    if args.run is None and args.params is None:
        ap.error("give --run RUN_DIR... or --params FILE (its package_ecg.run)")
    try:
        if args.run is None:
            from pipeline.params import ParamsError
            try:
                cfg = load_params(args.params)
            except ParamsError as exc:
                raise PackageError(str(exc)) from None
            run = Path(args.runs_root) / cfg.run
            scores = check_best(run, Path(args.runs_root))
            print("ecg.package: DS1 out-of-fold macro-F1 " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
                  + f"; packaging {cfg.run}")
        else:
            run = select_run(args.run)
        bins = ece_bins(args.params)
        spec = build_package(run, args.meta, args.out, args.params, args.calibration, bins)
    except (PackageError, FileNotFoundError, ValueError) as exc:
        print(f"ecg.package: error: {exc}", file=sys.stderr)
        return 2
    print(f"ecg.package: {args.out} <- {run} (T={spec['temperature']:.3f}, {spec['fs']} Hz, "
          f"window {spec['window_samples']}, channels {spec['channels']})")
    if args.mlflow:
        from pipeline import tracking
        # Into the training run when this store has it (else a new run); named "package" beside
        # evaluate_ecg's Keras-flavour "model".
        with tracking.run("ecg", spec["provenance"]["run"], spec["provenance"].get("mlflow_run_id")) as mlflow:
            uri = log_mlflow(args.out, name="package")
            run_id = mlflow.active_run().info.run_id
        print(f"ecg.package: logged {uri} (runs:/{run_id}/package); load it with "
              f"mlflow.pyfunc.load_model('runs:/{run_id}/package')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
