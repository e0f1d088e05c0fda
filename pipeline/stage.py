"""The command line every stage shares: named choices checked against their registries, --params, --data."""
from __future__ import annotations

import argparse


def run_args(doc: str | None, choices: dict, data: str | None = None, argv=None) -> argparse.Namespace:
    """Parse `--<key> NAME` for each key of `choices` (NAME must be in choices[key] unless that is None), `--params`, `--data`.

    An unknown name stops with an error that lists the valid ones.
    """
    ap = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    for key, valid in choices.items():
        ap.add_argument(f"--{key}", required=True, metavar=key.upper(),
                        help=f"one of: {', '.join(valid)}" if valid is not None else None)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if data is not None:
        ap.add_argument("--data", default=data, help=f"prepared data folder (default: {data})")
    args = ap.parse_args(argv)
    for key, valid in choices.items():
        value = getattr(args, key)
        if valid is not None and value not in valid:
            ap.error(f"unknown --{key} {value!r}; valid: {', '.join(valid)}")
    return args
