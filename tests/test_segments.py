"""The prediction log's segment files: what is read back is what was appended, and a failed
write leaves nothing behind."""

from __future__ import annotations

import os

import numpy as np
import pytest

from hotserve.learning import segments as seg_mod
from hotserve.learning import tensors
from hotserve.learning.segments import SegmentFiles


def _batch(n: int = 5):
    rows = {"x": [np.full((1, 3), k, np.float32) for k in range(n)], "ids": [np.array([[k]], np.int64) for k in range(n)]}
    return rows, {n_: np.concatenate(a) for n_, a in rows.items()}


def _append_and_read(segs: SegmentFiles, rows: dict) -> dict:
    parts, total = tensors.encode_rows_parts(rows)
    name, offset = segs.append(parts, total)
    return tensors.decode(segs.read(name, offset, total))


def test_appended_batches_read_back_as_stacked_tensors(tmp_path):
    segs = SegmentFiles(str(tmp_path))
    try:
        for n in (5, 1, 700):  # 700 rows: 1,401 buffers, more than one writev takes (1,024)
            rows, stacked = _batch(n)
            got = _append_and_read(segs, rows)
            assert set(got) == {"x", "ids"}
            np.testing.assert_array_equal(got["x"].reshape(n, 3), stacked["x"])
            np.testing.assert_array_equal(got["ids"].reshape(n, 1), stacked["ids"])
            assert got["x"].shape == (n, 1, 3)
        # Non-contiguous arrays and strings take the stacked path; its parts are plain buffers.
        odd = {"x": [np.arange(6, dtype=np.float32).reshape(2, 3)[:, ::2] for _ in range(2)],
               "s": [np.array([b"a", b"bc"], dtype=object)] * 2}
        got = _append_and_read(segs, odd)
        np.testing.assert_array_equal(got["x"], np.stack(odd["x"]))
        assert got["s"].tolist() == [[b"a", b"bc"]] * 2
    finally:
        segs.close()


def test_a_short_write_is_cut_off_and_raised(tmp_path, monkeypatch):
    segs = SegmentFiles(str(tmp_path))
    try:
        rows, _ = _batch(3)
        first = _append_and_read(segs, rows)
        assert first["x"].shape == (3, 1, 3)
        size = segs._size
        real = os.writev
        monkeypatch.setattr(seg_mod.os, "writev", lambda fd, bufs: real(fd, bufs[:1]))  # the header only
        parts, total = tensors.encode_rows_parts(rows)
        with pytest.raises(OSError, match=f"wrote {len(parts[0])} of {total} bytes"):
            segs.append(parts, total)
        assert os.path.getsize(os.path.join(str(tmp_path), segs._name)) == size  # the half write is gone
        monkeypatch.setattr(seg_mod.os, "writev", real)
        assert segs.append(parts, total)[1] == size  # the next append goes where the failed one was
        assert tensors.decode(segs.read(segs._name, size, total))["x"].shape == (3, 1, 3)
    finally:
        segs.close()
