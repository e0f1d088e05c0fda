"""Stage ingest_nstdb: the real noise records of the MIT-BIH Noise Stress Test Database into data/raw/nstdb/.

    python -m ecg.ingest_noise --params params.yaml [--out data/raw/nstdb]

Reads params `ecg_robustness` (source, mirror, noises; the robustness stage reads the same section).
The records `<noise>.hea` and `<noise>.dat` of each wanted noise (bw: baseline wander, ma: muscle
artefact) come from PhysioNet (database `source`, default nstdb) or from a local mirror folder
(`mirror`; the environment variable NSTDB_MIRROR overrides it). Every file is checked against a
SHA-256 list before it is kept:

* PhysioNet: the database's SHA256SUMS.txt (a missing list, a file it does not name or a mismatch is
  an error naming the URL);
* a mirror: its SHA256SUMS.txt (PhysioNet's list, copied with the files), else the `<sha256>  <file>`
  lines of its PROVENANCE.txt (../shared/data/nstdb states the hashes of the files it copied).

Downloading, copying and the checksum list parsing are ecg.ingest's (MirrorSource, PhysioNetSource,
parse_sums); files already present and valid are kept. SOURCE.json records the source, the checksum
list used and its sha256, so a changed source is a changed DVC output. Files of noises no longer
wanted are removed, so the folder holds exactly what the params ask for.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ecg.ingest import SUMS, IngestError, MirrorSource, PhysioNetSource, clean_partials, parse_sums
from pipeline.io import ensure_dir, sha256_file, write_json, write_text
from pipeline.params import PARAMS_FILE, ParamsError, load_section

SOURCE = "SOURCE.json"
PROVENANCE = "PROVENANCE.txt"
NOISE_RECORDS = ("bw", "ma", "em")   # the noise records NSTDB holds
_SHA = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class RobustnessParams:
    """params.yaml `ecg_robustness` (read by ingest_nstdb and evaluate_robustness_ecg)."""
    noises: tuple[str, ...] = ("bw", "ma")                 # NSTDB noise records added to DS2
    snr_db: tuple[float, ...] = (24, 18, 12, 6, 0, -6)     # the NSTDB protocol's levels (nst(1) SNR)
    source: str = "nstdb"                                  # PhysioNet database of the noise records
    mirror: str | None = None                              # local folder; env NSTDB_MIRROR overrides
    workers: int = 2                                       # robustness: processes reading and detecting

    def validate(self) -> None:
        unknown = [n for n in self.noises if n not in NOISE_RECORDS]
        if not self.noises or unknown:
            raise ParamsError(f"noises must name NSTDB noise records {list(NOISE_RECORDS)}, got {list(self.noises)}")
        if len(set(self.noises)) != len(self.noises):
            raise ParamsError(f"noises repeat a name: {list(self.noises)}")
        if not self.snr_db:
            raise ParamsError("snr_db must not be empty")
        if not self.source.strip():
            raise ParamsError("source must name a PhysioNet database")
        if self.workers < 0:
            raise ParamsError(f"workers must be >= 0, got {self.workers}")

    def mirror_dir(self) -> str | None:
        return os.environ.get("NSTDB_MIRROR") or self.mirror


def load_params(path=PARAMS_FILE) -> RobustnessParams:
    return load_section("ecg_robustness", RobustnessParams, path)


def noise_files(noises) -> list[str]:
    return [f"{n}.{ext}" for n in noises for ext in ("hea", "dat")]


def checksum_list(source) -> tuple[dict[str, str], str, str]:
    """(file -> sha256, where the list came from, sha256 of the list's text)."""
    text = source.text(SUMS)
    where = source.where(SUMS)
    if text is None and isinstance(source, MirrorSource):
        text = source.text(PROVENANCE)
        where = source.where(PROVENANCE)
        if text is not None:  # only '<sha256>  <file>' lines; the prose around them is skipped
            text = "".join(f"{h}  {n}\n" for n, h in parse_sums(text).items() if _SHA.match(h))
    if text is None:
        raise IngestError(f"{source.where(SUMS)}: checksum list missing at the source (and no {PROVENANCE} with "
                          f"sha256 lines); the noise records cannot be verified")
    sums = {n: h for n, h in parse_sums(text).items() if _SHA.match(h)}
    if not sums:
        raise IngestError(f"{where}: holds no '<sha256>  <file>' lines")
    return sums, where, hashlib.sha256(text.encode()).hexdigest()


def ingest(cfg: RobustnessParams, out_dir: Path, source) -> dict:
    ensure_dir(out_dir)
    stale = clean_partials(out_dir)
    sums, sums_where, sums_sha = checksum_list(source)
    wanted = noise_files(cfg.noises)
    unlisted = [n for n in wanted if n not in sums]
    if unlisted:
        raise IngestError(f"{sums_where}: no checksum for {unlisted}; cannot verify them")
    fetched = kept = 0
    for name in wanted:
        dest = out_dir / name
        if dest.exists() and sha256_file(dest) == sums[name]:
            kept += 1
            continue
        source.fetch(name, dest)
        fetched += 1
        if sha256_file(dest) != sums[name]:
            dest.unlink()
            raise IngestError(f"{source.where(name)}: SHA256 mismatch against {sums_where} (corrupt source file)")
    for path in out_dir.iterdir():  # noises no longer wanted: the folder holds exactly the params' noises
        if path.suffix in (".hea", ".dat") and path.name not in wanted:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    write_text(out_dir / SUMS, "".join(f"{sums[n]}  {n}\n" for n in sorted(wanted)))
    write_json(out_dir / SOURCE, {"database": cfg.source, "source": source.location, "noises": list(cfg.noises),
                                  "checksum_list": sums_where, "checksum_list_sha256": sums_sha})
    return {"fetched": fetched, "kept": kept, "stale_removed": len(stale), "checksums": sums_where}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ecg.ingest_noise", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(PARAMS_FILE))
    ap.add_argument("--out", default="data/raw/nstdb")
    args = ap.parse_args(argv)
    try:
        cfg = load_params(args.params)
        mirror = cfg.mirror_dir()
        source = MirrorSource(Path(mirror)) if mirror else PhysioNetSource(cfg.source)
        stats = ingest(cfg, Path(args.out), source)
    except (ParamsError, IngestError) as exc:
        print(f"ingest_nstdb: error: {exc}", file=sys.stderr)
        return 2
    print(f"ingest_nstdb: noises {list(cfg.noises)} from {source.location} -> {args.out} ({stats['fetched']} files "
          f"fetched, {stats['kept']} already valid; sha256 verified against {stats['checksums']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
