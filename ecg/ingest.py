"""Stage ingest_ecg: fetch a PhysioNet database (or copy a local mirror) into data/raw/<db>/.

Every file is checked against PhysioNet's SHA256SUMS.txt when one is present; files that
are already complete and valid are not fetched again.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from ecg import config
from pipeline.io import atomic_path, ensure_dir, sha256_file, write_text

SUMS = "SHA256SUMS.txt"


class IngestError(RuntimeError):
    """A source file is missing or fails its checksum; the message names it."""


def parse_sums(text: str) -> dict[str, str]:
    sums = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def record_files(records) -> list[str]:
    return [f"{r}.{ext}" for r in records for ext in ("hea", "dat", "atr")]


class MirrorSource:
    def __init__(self, root: Path):
        if not root.is_dir():
            raise IngestError(f"local mirror {root} is not a folder")
        self.root = root

    def text(self, name: str) -> str | None:
        path = self.root / name
        return path.read_text() if path.exists() else None

    def fetch(self, name: str, dest: Path) -> None:
        src = self.root / name
        if not src.exists():
            raise IngestError(f"{src}: missing in local mirror")
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)


class PhysioNetSource:
    def __init__(self, database: str):
        self.database = database

    def _download(self, name: str, folder: Path) -> Path:
        import wfdb.io.download as dl  # network access only here
        try:
            dl.dl_files(self.database, str(folder), [name])
        except Exception as exc:
            raise IngestError(f"PhysioNet {self.database}/{name}: download failed: {exc}") from None
        return folder / name

    def text(self, name: str) -> str | None:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                return self._download(name, Path(tmp)).read_text()
            except IngestError:
                return None

    def fetch(self, name: str, dest: Path) -> None:
        with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
            got = self._download(name, Path(tmp))
            got.replace(dest)


def resolve_records(cfg: config.EcgData, source) -> list[str]:
    if cfg.records != "all":
        return [str(r) for r in cfg.records]
    listing = source.text("RECORDS")
    if not listing:
        raise IngestError(f"database '{cfg.database}': no RECORDS list found at the source")
    return listing.split()


def ingest(cfg: config.EcgData, out_dir: Path, source) -> dict[str, int]:
    """Make out_dir hold every wanted file, verified; return counts of fetched/kept files."""
    ensure_dir(out_dir)
    records = resolve_records(cfg, source)
    sums_text = source.text(SUMS)
    sums = parse_sums(sums_text) if sums_text else {}
    fetched = kept = 0
    for name in record_files(records):
        dest = out_dir / name
        want = sums.get(name)
        if dest.exists() and (want is None or sha256_file(dest) == want):
            kept += 1
            continue
        source.fetch(name, dest)
        fetched += 1
        if want is not None and sha256_file(dest) != want:
            dest.unlink()
            raise IngestError(f"{name}: SHA256 mismatch against {SUMS} of '{cfg.database}' (corrupt source file)")
    write_text(out_dir / "RECORDS", "\n".join(records) + "\n")
    if sums:
        listed = set(record_files(records))
        write_text(out_dir / SUMS, "".join(f"{h}  {n}\n" for n, h in sorted(sums.items()) if n in listed))
    return {"records": len(records), "fetched": fetched, "kept": kept, "verified": bool(sums)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default=None, help="default: data/raw/<database>")
    args = ap.parse_args(argv)
    cfg = config.load(args.params)
    mirror = cfg.mirror_dir()
    source = MirrorSource(Path(mirror)) if mirror else PhysioNetSource(cfg.database)
    out = Path(args.out or f"data/raw/{cfg.database}")
    stats = ingest(cfg, out, source)
    where = f"mirror {mirror}" if mirror else "PhysioNet"
    print(f"ingest_ecg: {stats['records']} records from {where} -> {out} "
          f"({stats['fetched']} files fetched, {stats['kept']} already valid, sha256 verified: {stats['verified']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
