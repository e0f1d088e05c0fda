"""Stage ingest_ecg: fetch a PhysioNet database (or copy a local mirror) into data/raw/<db>/.

With `ecg_data.verify: true` (the default) every file is checked against the source's
SHA256SUMS.txt, and a checksum list that is missing or cannot be fetched is an error.
`verify: false` is the explicit opt-out; it is recorded in SOURCE.json. Files already
complete and valid are not fetched again.

SOURCE.json (inside the output folder) records where the data came from (mirror path or
URL) and the sha256 of the checksum list, so a changed source is a changed DVC output.
"""
from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path

from ecg import config
from pipeline.io import atomic_path, ensure_dir, sha256_file, write_json, write_text

SUMS = "SHA256SUMS.txt"
SOURCE = "SOURCE.json"
PART_GLOB = ".*.part*"  # what pipeline.io.atomic_path and PhysioNetSource.fetch leave when killed


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

    @property
    def location(self) -> str:
        return str(self.root)

    def where(self, name: str) -> str:
        return str(self.root / name)

    def text(self, name: str) -> str | None:
        """The file's text, or None if the mirror has no such file."""
        path = self.root / name
        try:
            return path.read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise IngestError(f"{path}: unreadable: {exc}") from None

    def fetch(self, name: str, dest: Path) -> None:
        src = self.root / name
        if not src.exists():
            raise IngestError(f"{src}: missing in local mirror")
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)


class PhysioNetSource:
    def __init__(self, database: str):
        self.database = database

    @property
    def location(self) -> str:
        import wfdb.io.download as dl
        return f"{dl.PN_CONTENT_URL}{self.database}/"

    def where(self, name: str) -> str:
        return f"{self.location}{name}"

    def _download(self, name: str, folder: Path) -> Path:
        import wfdb.io.download as dl  # network access only here
        try:
            dl.dl_files(self.database, str(folder), [name])
        except Exception as exc:  # DNS, HTTP 404, timeouts: wfdb raises assorted types
            raise IngestError(f"{self.where(name)}: download failed: {type(exc).__name__}: {exc}") from None
        got = folder / name
        if not got.exists():
            raise IngestError(f"{self.where(name)}: download produced no file")
        return got

    def text(self, name: str) -> str:
        """The file's text; any failure (offline, missing) is an IngestError naming the URL."""
        with tempfile.TemporaryDirectory(prefix=".download.part") as tmp:
            return self._download(name, Path(tmp)).read_text()

    def fetch(self, name: str, dest: Path) -> None:
        # the prefix matches PART_GLOB, so a killed download is cleaned at the next start
        with tempfile.TemporaryDirectory(prefix=f".{dest.name}.part", dir=dest.parent) as tmp:
            got = self._download(name, Path(tmp))
            got.replace(dest)


def clean_partials(out_dir: Path) -> list[str]:
    """Remove partial files/folders a killed run left (they would be hashed into the output)."""
    removed = []
    for path in sorted(out_dir.glob(PART_GLOB)):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed.append(path.name)
    return removed


def resolve_records(cfg: config.EcgData, source) -> list[str]:
    if cfg.records != "all":
        return [str(r) for r in cfg.records]
    listing = source.text("RECORDS")
    if listing is None:
        raise IngestError(f"{source.where('RECORDS')}: no RECORDS list at the source (database '{cfg.database}')")
    records = listing.split()
    if not records:
        raise IngestError(f"{source.where('RECORDS')}: RECORDS list is empty (database '{cfg.database}')")
    return records


def load_sums(cfg: config.EcgData, source) -> tuple[dict[str, str], str | None]:
    """The checksum list and its sha256; with verify on, a missing or empty list is an error."""
    if not cfg.verify:
        return {}, None
    text = source.text(SUMS)
    if text is None:
        raise IngestError(f"{source.where(SUMS)}: checksum list missing at the source; files cannot be "
                          f"verified (set ecg_data.verify: false to use unverified data deliberately)")
    sums = parse_sums(text)
    if not sums:
        raise IngestError(f"{source.where(SUMS)}: checksum list holds no '<sha256>  <file>' lines")
    import hashlib
    return sums, hashlib.sha256(text.encode()).hexdigest()


def ingest(cfg: config.EcgData, out_dir: Path, source) -> dict[str, int]:
    """Make out_dir hold every wanted file, verified; return counts of fetched/kept files."""
    ensure_dir(out_dir)
    stale = clean_partials(out_dir)
    records = resolve_records(cfg, source)
    sums, sums_sha = load_sums(cfg, source)
    if cfg.verify:
        unlisted = [n for n in record_files(records) if n not in sums]
        if unlisted:
            raise IngestError(f"{source.where(SUMS)}: no checksum for {unlisted[:6]}"
                              f"{' ...' if len(unlisted) > 6 else ''}; cannot verify them")
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
            raise IngestError(f"{source.where(name)}: SHA256 mismatch against {source.where(SUMS)} "
                              f"(corrupt source file)")
    write_text(out_dir / "RECORDS", "\n".join(records) + "\n")
    if sums:
        listed = set(record_files(records))
        write_text(out_dir / SUMS, "".join(f"{h}  {n}\n" for n, h in sorted(sums.items()) if n in listed))
    else:
        with contextlib.suppress(FileNotFoundError):
            (out_dir / SUMS).unlink()  # a list from an earlier verified run no longer applies
    write_json(out_dir / SOURCE, {
        "database": cfg.database, "source": source.location, "verify": cfg.verify,
        "checksum_list": source.where(SUMS) if cfg.verify else None, "checksum_list_sha256": sums_sha,
    })
    return {"records": len(records), "fetched": fetched, "kept": kept, "verified": bool(sums),
            "stale_removed": len(stale)}


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
    note = "" if stats["verified"] else " -- UNVERIFIED: ecg_data.verify is false"
    print(f"ingest_ecg: {stats['records']} records from {where} -> {out} "
          f"({stats['fetched']} files fetched, {stats['kept']} already valid, sha256 verified: {stats['verified']}"
          f"{', ' + str(stats['stale_removed']) + ' stale partial files removed' if stats['stale_removed'] else ''})"
          f"{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
