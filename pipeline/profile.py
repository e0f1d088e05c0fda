"""Param profiles: a YAML file under profiles/ that states only the keys differing from params.yaml.

    python -m pipeline.profile gpu            # print the `dvc exp run -S ...` command
    python -m pipeline.profile gpu --run      # run it as a DVC experiment
    python -m pipeline.profile gpu --write params.yaml   # or write the merged params (then `dvc repro`)

Every key of a profile must exist in params.yaml (a misspelt key is an error naming it), so a
profile cannot drift silently when params.yaml changes; lists are replaced, mappings merged.
"""
from __future__ import annotations

import argparse
import copy
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.params import ParamsError, read_params

PROFILES = Path("profiles")


def load(name: str, root: Path = PROFILES) -> dict:
    path = Path(root) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(root).glob("*.yaml"))
        raise ParamsError(f"{path}: no such profile; known: {known}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: a profile is a mapping of params.yaml keys")
    return data


def overrides(profile: dict, params: dict, where: str = "") -> dict[str, object]:
    """Flatten a profile into {dotted.key: value}, checking each key exists in `params`."""
    out = {}
    for key, value in profile.items():
        path = f"{where}{key}"
        if not isinstance(params, dict) or key not in params:
            raise ParamsError(f"profile key '{path}' is not in params.yaml")
        if isinstance(value, dict) and isinstance(params[key], dict) and value:
            out.update(overrides(value, params[key], f"{path}."))
        else:
            out[path] = value
    return out


def merged(params: dict, flat: dict) -> dict:
    result = copy.deepcopy(params)
    for dotted, value in flat.items():
        node = result
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    return result


def exp_command(flat: dict) -> list[str]:
    cmd = ["dvc", "exp", "run"]
    for key, value in flat.items():
        cmd += ["-S", f"{key}={yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix('...').strip()}"]
    return cmd


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--run", action="store_true", help="run `dvc exp run -S ...` now")
    ap.add_argument("--write", metavar="FILE", help="write params.yaml merged with the profile to FILE")
    args = ap.parse_args(argv)
    params = read_params(args.params)
    flat = overrides(load(args.name), params)
    cmd = exp_command(flat)
    if args.write:
        from pipeline.io import write_text
        write_text(args.write, yaml.safe_dump(merged(params, flat), sort_keys=False))
        print(f"wrote {args.write}")
    elif args.run:
        return subprocess.call(cmd)
    else:
        print(shlex.join(cmd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
