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


@pytest.fixture(params=[True, False], ids=["direct", "cached"])
def segs(request, tmp_path):
    s = SegmentFiles(str(tmp_path), direct_io=request.param)
    yield s
    s.close()


def test_appended_batches_read_back_as_stacked_tensors(segs):
    for n in (5, 1, 700):
        rows, stacked = _batch(n)
        got = _append_and_read(segs, rows)
        assert set(got) == {"x", "ids"}
        np.testing.assert_array_equal(got["x"].reshape(n, 3), stacked["x"])
        np.testing.assert_array_equal(got["ids"].reshape(n, 1), stacked["ids"])
        assert got["x"].shape == (n, 1, 3)
        assert segs._size % 4096 == 0  # every append starts on a block boundary (O_DIRECT's rule)
    # Non-contiguous arrays and strings take the stacked path; its parts are plain buffers.
    odd = {"x": [np.arange(6, dtype=np.float32).reshape(2, 3)[:, ::2] for _ in range(2)],
           "s": [np.array([b"a", b"bc"], dtype=object)] * 2}
    got = _append_and_read(segs, odd)
    np.testing.assert_array_equal(got["x"], np.stack(odd["x"]))
    assert got["s"].tolist() == [[b"a", b"bc"]] * 2
    # 0-d rows are copied one by one (concatenate has no axis for them); empty ones are nothing.
    got = _append_and_read(segs, {"v": [np.float64(k) * np.ones(()) for k in range(4)],
                                  "none": [np.zeros((1, 0), np.float32)] * 4})
    np.testing.assert_array_equal(got["v"], [0.0, 1.0, 2.0, 3.0])
    assert got["none"].shape == (4, 1, 0)


def test_appends_larger_than_the_staging_buffer(segs, monkeypatch):
    monkeypatch.setattr(seg_mod, "_STAGING", 3 * 4096)  # the same paths as a 4 MiB buffer, at test size
    rows = {"x": [np.full((1, 1000), k, np.float32) for k in range(9)],   # 4,000 B rows: fill, flush, carry
            "big": [np.arange(5000, dtype=np.float64) + k for k in range(2)]}  # 40,000 B rows: larger than the buffer
    for _ in range(2):
        got = _append_and_read(segs, rows)
        np.testing.assert_array_equal(got["x"], np.stack(rows["x"]))
        np.testing.assert_array_equal(got["big"], np.stack(rows["big"]))


def test_a_short_write_is_cut_off_and_raised(segs, monkeypatch):
    rows, _ = _batch(3)
    first = _append_and_read(segs, rows)
    assert first["x"].shape == (3, 1, 3)
    size = segs._size
    real = os.pwrite
    monkeypatch.setattr(seg_mod.os, "pwrite", lambda fd, buf, off: real(fd, buf, off) // 2)  # a full disk's short count
    parts, total = tensors.encode_rows_parts(rows)
    with pytest.raises(OSError, match="wrote 2048 of 4096 bytes"):
        segs.append(parts, total)
    assert os.path.getsize(os.path.join(segs.directory, segs._name)) == size  # the half write is gone
    monkeypatch.setattr(seg_mod.os, "pwrite", real)
    assert segs.append(parts, total)[1] == size  # the next append goes where the failed one was
    assert tensors.decode(segs.read(segs._name, size, total))["x"].shape == (3, 1, 3)


def test_direct_io_falls_back_where_the_filesystem_refuses_it(tmp_path, monkeypatch):
    real = os.open

    def no_direct(path, flags, mode=0o777):
        if flags & os.O_DIRECT:
            raise OSError(22, "Invalid argument")  # what tmpfs answers
        return real(path, flags, mode)

    monkeypatch.setattr(seg_mod.os, "open", no_direct)
    segs = SegmentFiles(str(tmp_path))
    try:
        rows, stacked = _batch(4)
        got = _append_and_read(segs, rows)
        assert not segs.direct
        np.testing.assert_array_equal(got["x"].reshape(4, 3), stacked["x"])
    finally:
        segs.close()
