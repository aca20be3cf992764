"""Run directories: what a killed run left half-written goes when the directory is overwritten."""

from __future__ import annotations

import os

from tunnelscope.rundir import check_free, claim, remove_stale_temps


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
    assert check_free(out, overwrite=True)
    assert not (out / ".config.json.a1b2.tmp").exists() and not (out / "figures" / ".rank.png.c3.tmp").exists()
    assert (out / "notes.txt").exists()
    os.symlink(outside, out / "linked")
    assert remove_stale_temps(out) == [] and (outside / ".keep.x.tmp").exists()  # links are not followed


def test_claiming_with_overwrite_removes_them_too(tmp_path):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "config.json").write_text('{"kind": "dynamics"}')
    (out / ".step-0000001.parquet.zz.tmp").write_text("half")
    claim(out, "dynamics", overwrite=True)
    assert not any(out.glob(".*.tmp"))


def test_output_directories_that_are_links_or_hold_linked_folders_are_refused(tmp_path):
    import pytest

    from tunnelscope.errors import RunDirectoryError
    from tunnelscope.report.run import refresh_report

    elsewhere = tmp_path / "v2"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep")
    run = tmp_path / "r"
    run.mkdir()
    os.symlink(elsewhere, run / "dynamics")
    with pytest.raises(RunDirectoryError, match="does not write through links"):
        claim(run / "dynamics", "dynamics", overwrite=True)
    with pytest.raises(RunDirectoryError, match="is a link to a folder"):
        check_free(run, overwrite=True)
    os.symlink(elsewhere, tmp_path / "figures-run")
    with pytest.raises(RunDirectoryError, match="is a link"):
        refresh_report(tmp_path / "figures-run", redraw=True)
    assert (elsewhere / "precious.txt").read_text() == "keep"


def test_whole_or_nothing_removes_what_the_block_wrote_and_keeps_what_was_there(tmp_path):
    import errno

    import pytest

    from tunnelscope.errors import RunDirectoryError
    from tunnelscope.rundir import whole_or_nothing

    out = tmp_path / "run"
    (out / "kept").mkdir(parents=True)
    (out / "old.txt").write_text("old")
    (out / "replaced.txt").write_text("before")
    with pytest.raises(RunDirectoryError, match=r"no space left on device while writing .*new.txt: what this run "
                                                r"had written there was removed"):
        with whole_or_nothing(out):
            (out / "figures").mkdir()
            (out / "figures" / "a.png").write_text("new")
            (out / "replaced.txt").write_text("after, longer")
            raise OSError(errno.ENOSPC, "No space left on device", str(out / "new.txt"))
    assert sorted(p.name for p in out.iterdir()) == ["kept", "old.txt"]  # a replaced file cannot come back
    with pytest.raises(KeyboardInterrupt):
        with whole_or_nothing(tmp_path / "fresh"):
            (tmp_path / "fresh" / "deep").mkdir(parents=True)
            raise KeyboardInterrupt
    assert not (tmp_path / "fresh").exists()
    with pytest.raises(RunDirectoryError, match="what was finished is kept there"):
        with whole_or_nothing(tmp_path / "steps", resumable=True):
            (tmp_path / "steps" / "empty").mkdir(parents=True)
            (tmp_path / "steps" / "step-1.parquet").write_text("done")
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
    assert [p.name for p in (tmp_path / "steps").iterdir()] == ["step-1.parquet"]
