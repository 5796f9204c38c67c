"""vae.atomic.atomic_write: a file is replaced whole or not at all."""

import pytest

from vae.atomic import PARTIAL_GLOB, atomic_write, partial_file


def test_the_file_becomes_what_was_written_and_no_partial_file_stays(tmp_path):
    target = tmp_path / "results.md"
    target.write_text("old")
    with atomic_write(target) as f:
        f.write(b"new")
        assert target.read_text() == "old"  # nothing under the name until the block ends
        assert partial_file(target).exists()
    assert target.read_text() == "new"
    assert list(tmp_path.glob(PARTIAL_GLOB)) == []


def test_a_failed_write_leaves_the_old_file_and_no_partial_file(tmp_path):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"complete")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"complete"
    assert list(tmp_path.glob(PARTIAL_GLOB)) == []


def test_the_partial_file_is_hidden_beside_the_target_and_matched_by_the_clean_up_pattern(tmp_path):
    partial = partial_file(tmp_path / "last.ckpt")
    assert partial.parent == tmp_path and partial.name.startswith(".last.ckpt.")
    assert partial.match(PARTIAL_GLOB)
