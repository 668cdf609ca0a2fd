"""Atomic replacement, shared by every writer of finished work (checkpoints, sessions, reports)."""

import json
import os
import stat
import subprocess
import sys

import pytest

from videomla_app.atomic import replacing
from videomla_app.evaluate import write_json
from videomla_app.video_io import concat_videos


def test_a_finished_write_replaces_the_file_with_normal_permissions(tmp_path, new_file_mode):
    path = tmp_path / "report.json"
    path.write_text("old")
    with replacing(path) as tmp:
        assert tmp.parent == tmp_path and tmp != path
        tmp.write_text("new")
        assert path.read_text() == "old"  # nothing is visible until the block ends
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["report.json"]
    assert stat.S_IMODE(path.stat().st_mode) == new_file_mode  # not mkstemp's 0600


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_text("steps 1-500")
    with pytest.raises(OSError, match="disk full"):
        with replacing(path) as tmp:
            tmp.write_text("half")
            raise OSError("disk full")
    assert path.read_text() == "steps 1-500" and os.listdir(tmp_path) == ["ckpt.pt"]


def test_a_killed_writer_s_temporary_file_is_removed_by_the_next_write(tmp_path):
    path = tmp_path / "ckpt.pt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a pid that has exited
    (tmp_path / f".ckpt.pt.{dead}-1.tmp").write_text("half of a killed save")
    (tmp_path / f".ckpt.pt.{os.getpid()}-999999.tmp").write_text("a live writer's")  # not touched
    (tmp_path / ".other.pt.1-1.tmp").write_text("another file's")  # not touched
    with replacing(path) as tmp:
        tmp.write_text("step 600")
    assert sorted(os.listdir(tmp_path)) == [f".ckpt.pt.{os.getpid()}-999999.tmp", ".other.pt.1-1.tmp", "ckpt.pt"]


def test_report_and_failed_join_leave_no_temporary_file(tmp_path):
    write_json({"a": 1}, tmp_path / "eval.json")
    assert json.loads((tmp_path / "eval.json").read_text()) == {"a": 1}
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(OSError, match="joining videos failed"):
        concat_videos([tmp_path / "bad.mp4"], tmp_path / "out.mp4")
    assert sorted(os.listdir(tmp_path)) == ["bad.mp4", "eval.json"]
