"""Run directories: what a killed run left half-written goes when the directory is overwritten."""

from __future__ import annotations

import os

from tunnelscope.rundir import check_free, claim


def test_overwriting_removes_half_written_temporary_files_and_nothing_else(tmp_path):
    out = tmp_path / "run"
    (out / "figures").mkdir(parents=True)
    (out / "summary.json").write_text("{}")
    (out / ".config.json.a1b2.tmp").write_text("half")
    (out / "figures" / ".rank.png.c3.tmp").write_text("half")
    (out / "notes.txt").write_text("mine")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / ".keep.x.tmp").write_text("not ours")
    os.symlink(outside, out / "linked")
    assert check_free(out, overwrite=True)
    assert not (out / ".config.json.a1b2.tmp").exists() and not (out / "figures" / ".rank.png.c3.tmp").exists()
    assert (out / "notes.txt").exists() and (outside / ".keep.x.tmp").exists()  # links are not followed


def test_claiming_with_overwrite_removes_them_too(tmp_path):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "config.json").write_text('{"kind": "dynamics"}')
    (out / ".step-0000001.parquet.zz.tmp").write_text("half")
    claim(out, "dynamics", overwrite=True)
    assert not any(out.glob(".*.tmp"))
