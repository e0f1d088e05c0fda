"""Write params-gpu.yaml: params.yaml (comments kept) with the vision arm's GPU-profile lines.

    python -m vision.gpu_profile       # rerun after any edit of params.yaml

Only lines of vision_pretrain / vision_train change; the header lists the same changes as a
`dvc exp run -S ...` command for those who keep params.yaml as it is.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

from pipeline.io import write_text

# (section, regex matching one whole line of params.yaml, the GPU line)
EDITS = (
    ("vision_pretrain", r"    vgg16: source:cifar10\b.*",
     "    vgg16: imagenet          # GPU: Keras's ImageNet weights (internet once, or env VGG16_WEIGHTS)"),
    ("vision_pretrain", r"  limit_per_class: .*",
     "  limit_per_class: null      # GPU: all of CIFAR-10 (45,000 train / 5,000 val / 10,000 test)"),
    ("vision_pretrain", r"  image_size: .*",
     "  image_size: 128            # GPU: AlexNet gets its ImageNet stem (auto, >= 128 px); images upsampled in-model"),
    ("vision_pretrain", r"    alexnet: \{epochs: .*",
     "    alexnet: {epochs: 30, batch_size: 128, learning_rate: 0.001, patience: 5, min_delta: 0.001}"),
    ("vision_pretrain", r"    vgg16: \{epochs: .*",
     "    vgg16: {epochs: 30, batch_size: 128, learning_rate: 0.0001, patience: 5, min_delta: 0.001}"),
    ("vision_train", r"  head_fit: .*",
     "  head_fit: {epochs: 100, batch_size: 128, learning_rate: 0.001, patience: 10, min_delta: 0.001}"),
    ("vision_train", r"    unfreeze_from: .*",
     "    unfreeze_from: {alexnet: block3, vgg16: block4}   # GPU: deeper fine-tuning; BatchNorm stays frozen"),
    ("vision_train", r"    fit: \{epochs: .*",
     "    fit: {epochs: 30, batch_size: 64, learning_rate: 0.00001, patience: 5, min_delta: 0.001}"),
)
HEADER = """\
# GPU profile, written by `python -m vision.gpu_profile` from params.yaml: a full copy in which only
# lines of vision_pretrain / vision_train differ (marked "GPU:"). Rerun that command after editing params.yaml.
# Use it as the params file:        cp params-gpu.yaml params.yaml && dvc repro
# or as an experiment on params.yaml:  dvc exp run {sets}
# Mixed precision switches on by itself where a GPU is present (mixed_precision: auto).
"""


def gpu_text(cpu_text: str) -> str:
    lines, section, done = cpu_text.splitlines(), None, set()
    for i, line in enumerate(lines):
        if m := re.match(r"([A-Za-z_]\w*):", line):
            section = m.group(1)
        for j, (sec, pattern, new) in enumerate(EDITS):
            if j not in done and sec == section and re.fullmatch(pattern, line):
                lines[i] = new
                done.add(j)
                break
    missing = [EDITS[j][:2] for j in range(len(EDITS)) if j not in done]
    if missing:
        raise ValueError(f"params.yaml lines not found for the GPU profile: {missing}; update vision/gpu_profile.py")
    body = "\n".join(lines) + "\n"
    changed = _flat(yaml.safe_load(body))
    before = _flat(yaml.safe_load(cpu_text))
    sets = " \\\n#       ".join(f"-S '{k}={_fmt(v)}'" for k, v in changed.items() if before.get(k) != v)
    return HEADER.format(sets=sets) + body


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and key != "flip":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _fmt(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, float):
        return f"{v:.10f}".rstrip("0")
    return str(v)


def main(argv=None) -> int:
    src, dst = Path("params.yaml"), Path("params-gpu.yaml")
    write_text(dst, gpu_text(src.read_text()))
    print(f"wrote {dst} from {src}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
