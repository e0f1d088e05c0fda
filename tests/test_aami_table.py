"""The AAMI map covers every beat code of WFDB's own annotation table; only non-beat codes are skipped."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import wfdb
from wfdb.io.annotation import ann_label_table

from ecg.beats import AAMI_CLASSES, AAMI_MAP, NON_BEAT_SYMBOLS, class_index
from ecg.reader import RecordError

TABLE = [(int(r.label_store), str(r.symbol), str(r.description)) for r in ann_label_table.itertuples()
         if str(r.symbol).strip()]  # label 0, "Not an actual annotation", has no symbol

# EC57 class of the codes MIT-BIH DS1/DS2 never contain (other databases do).
NOT_IN_MITDB = {"B": "N", "n": "N", "r": "V", "?": "Q"}


def test_table_is_wfdbs_and_not_empty():
    assert len(TABLE) >= 39  # wfdb 4.3 lists 39 codes with a symbol; a shrunken table would make the walk vacuous
    assert {"N", "V", "B", "n", "r", "~"} <= {s for _, s, _ in TABLE}


@pytest.mark.parametrize("label,symbol,description", TABLE, ids=[f"{s}-{d}" for _, s, d in TABLE])
def test_every_wfdb_code_is_mapped_or_declared_non_beat(label, symbol, description):
    in_map, non_beat = symbol in AAMI_MAP, symbol in NON_BEAT_SYMBOLS
    assert in_map != non_beat, f"code {symbol!r} ({description}): mapped={in_map}, non-beat={non_beat}"
    if in_map:
        assert AAMI_MAP[symbol] in AAMI_CLASSES
    idx = class_index(np.array([symbol], dtype=object), "t.atr")
    assert idx[0] == (AAMI_CLASSES.index(AAMI_MAP[symbol]) if in_map else -1)


def test_beat_descriptions_are_all_mapped():
    """Every table row described as a beat or contraction is a beat in the AAMI map."""
    for _, symbol, description in TABLE:
        text = description.lower()
        if ("beat" in text or "contraction" in text) and "non-conducted" not in text:
            assert symbol in AAMI_MAP, f"{symbol!r} ({description}) looks like a beat but is not mapped"


@pytest.mark.parametrize("symbol,cls", sorted(NOT_IN_MITDB.items()))
def test_codes_outside_mitdb_follow_ec57(symbol, cls):
    assert AAMI_MAP[symbol] == cls


def test_map_lists_nothing_outside_the_table():
    table = {s for _, s, _ in TABLE}
    assert set(AAMI_MAP) <= table
    assert not set(AAMI_MAP) & NON_BEAT_SYMBOLS


def test_unknown_symbol_still_an_error_naming_the_file():
    with pytest.raises(RecordError, match=r"x\.atr: unknown annotation symbol.*'Z'"):
        class_index(np.array(["N", "Z"], dtype=object), "x.atr")


MIRROR = Path(os.environ.get("ECG_MIRROR", "../shared/data/mitdb"))


@pytest.mark.skipif(not (MIRROR / "RECORDS").exists(), reason="no MIT-BIH mirror")
def test_mitdb_holds_none_of_the_new_codes():
    """Extending the map leaves prepare_ecg's output on MIT-BIH unchanged: none of its files uses the new codes."""
    seen = set()
    for rec in (MIRROR / "RECORDS").read_text().split():
        seen |= set(wfdb.rdann(str(MIRROR / rec), "atr").symbol)
    assert not seen & set(NOT_IN_MITDB)
    assert seen <= set(AAMI_MAP) | NON_BEAT_SYMBOLS
