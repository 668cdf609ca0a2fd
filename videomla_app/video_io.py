"""Video files: a streaming H.264 writer that is playable at every moment, and readers.

The writer pipes raw RGB frames into the ffmpeg binary shipped by ``imageio-ffmpeg`` and muxes a
*fragmented* MP4 (``empty_moov`` + one fragment per frame, zero-latency x264): every frame that
ffmpeg has received is on disk in a playable form, so a crash, Ctrl-C or kill leaves a video of
every finished chunk. Frames go to ``<name>.partial.mp4`` beside the target; :meth:`close`
renames it to the final path atomically (and refuses to replace an existing file unless asked).

Each chunk starts with an IDR frame and the quantiser is constant (``-qp``), so encoding a video in
two parts and joining them with :func:`concat_videos` (stream copy) gives byte-identical frames to
encoding it in one go: an extended clip equals a longer run frame for frame.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np

from .atomic import replacing


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def partial_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.stem + ".partial" + p.suffix)


class StreamingMP4Writer:
    """Append frames chunk by chunk to a fragmented H.264 MP4 (see module docstring)."""

    def __init__(self, path: str | Path, fps: int, size: tuple[int, int], *, metadata: dict | None = None,
                 overwrite: bool = False, upscale: int = 1, qp: int = 18,
                 chunk_frames: tuple[int, int] | None = None) -> None:
        """``chunk_frames`` = (pixel frames of the first chunk, of every later chunk): key frames go
        exactly at chunk starts."""
        self.path, self.tmp = Path(path), partial_path(path)
        self.fps, (self.width, self.height), self.overwrite = fps, size, overwrite
        self.frames = 0
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists (use --force to replace it)")
        vf = ["pad=ceil(iw/2)*2:ceil(ih/2)*2"]
        if upscale > 1:
            vf.insert(0, f"scale=iw*{upscale}:ih*{upscale}:flags=neighbor")
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{self.width}x{self.height}", "-r", str(fps),
               "-i", "pipe:0", "-vf", ",".join(vf), "-c:v", "libx264", "-preset", "veryfast",
               "-tune", "zerolatency", "-qp", str(qp), "-pix_fmt", "yuv420p", *_keyframes(chunk_frames),
               "-movflags", "+frag_every_frame+empty_moov+default_base_moof", "-flush_packets", "1"]
        cmd += [*_metadata_args(metadata), "-f", "mp4", str(self.tmp)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def write(self, frames: np.ndarray) -> None:
        """frames: uint8 [n, H, W, 3]."""
        if frames.shape[1:] != (self.height, self.width, 3) or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [n, {self.height}, {self.width}, 3], got "
                             f"{frames.dtype} {list(frames.shape)}")
        try:
            self.proc.stdin.write(np.ascontiguousarray(frames).tobytes())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise OSError(f"ffmpeg stopped writing {self.tmp}: {self._stderr()}") from None
        self.frames += len(frames)

    def _stderr(self) -> str:
        """ffmpeg's last error line (or the likely cause when it printed none)."""
        try:
            lines = (self.proc.stderr.read() or b"").decode(errors="replace").strip().splitlines()
        except Exception:
            lines = []
        if lines:
            return lines[-1]
        code = self.proc.poll() or 0
        if 0 < 256 - code < 134:  # ffmpeg exits with AVERROR(errno) = -errno, i.e. 256 - errno
            return os.strerror(256 - code).lower()
        return f"ffmpeg exited with code {code}"

    def _finish_ffmpeg(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        if self.proc.wait() != 0:
            raise OSError(f"ffmpeg failed writing {self.tmp}: {self._stderr()}")

    def close(self) -> Path:
        """Finish the file and move it to its final path atomically; returns that path."""
        self._finish_ffmpeg()
        if self.frames == 0:
            self.tmp.unlink(missing_ok=True)
            raise ValueError("no frames were written")
        if self.path.exists() and not self.overwrite:
            raise FileExistsError(f"{self.path} appeared while writing; the video is at {self.tmp}")
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> Path | None:
        """Stop ffmpeg and keep the partial file (playable) if it holds any frame."""
        try:
            self._finish_ffmpeg()
        except OSError:
            pass
        return self.tmp if self.tmp.exists() and self.frames else None

    def __enter__(self) -> "StreamingMP4Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _metadata_args(metadata: dict | None) -> list[str]:
    """Our metadata travels as one JSON string in the MP4's comment tag."""
    return ["-metadata", "comment=" + json.dumps(metadata, separators=(",", ":"))] if metadata else []


def _keyframes(chunk_frames: tuple[int, int] | None) -> list[str]:
    if chunk_frames is None:
        return []
    first, period = chunk_frames
    expr = f"expr:eq(n,0)+gte(n,{first})*eq(mod(n-{first},{period}),0)"
    return ["-force_key_frames", expr, "-g", "100000", "-sc_threshold", "0"]


def concat_videos(parts: list[Path], out: Path, metadata: dict | None = None) -> Path:
    """Join videos with identical encoding settings without re-encoding (atomic: temp + rename)."""
    out = Path(out)
    listing = out.with_name(out.stem + ".joining.txt")
    listing.write_text("".join(f"file '{Path(p).resolve().as_posix()}'\n" for p in parts))
    try:
        with replacing(out) as tmp:  # a failed join leaves neither a half file nor a temporary one
            r = subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "concat", "-safe",
                                "0", "-i", str(listing), "-c", "copy", *_metadata_args(metadata),
                                "-movflags", "+frag_every_frame+empty_moov+default_base_moof", "-f", "mp4", str(tmp)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise OSError(f"joining videos failed: "
                              f"{r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
    finally:
        listing.unlink(missing_ok=True)
    return out


def probe(path: str | Path) -> dict:
    """fps, size, frame count and our metadata comment of a video (decodes it: exact count)."""
    import imageio_ffmpeg

    path = str(path)
    gen = imageio_ffmpeg.read_frames(path)
    meta = next(gen)
    n = sum(1 for _ in gen)
    return {"fps": meta.get("fps"), "size": tuple(meta.get("size", (0, 0))), "frames": n,
            "comment": _comment(path)}


def _comment(path: str) -> dict | None:
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", path, "-f", "ffmetadata", "-"],
                         capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("comment="):
            try:
                return json.loads(line[len("comment="):].replace("\\=", "=").replace("\\;", ";")
                                  .replace("\\#", "#").replace("\\\\", "\\"))
            except json.JSONDecodeError:
                return None
    return None


def read_frames(path: str | Path, last_seconds: float | None = None,
                size: tuple[int, int] | None = None, fps: int | None = None) -> tuple[np.ndarray, float]:
    """Decode a video (or only its last ``last_seconds``) to uint8 [n, H, W, 3], optionally resampled
    to ``size`` (W, H) and ``fps``. Returns (frames, fps). Raises ValueError if unreadable."""
    import imageio_ffmpeg

    input_params = ["-sseof", f"-{last_seconds:.3f}"] if last_seconds else None
    output_params = ["-vf", f"fps={fps}"] if fps else None
    try:
        gen = imageio_ffmpeg.read_frames(str(path), input_params=input_params, output_params=output_params)
        meta = next(gen)
        w, h = meta["size"]
        frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen]
    except (RuntimeError, OSError, StopIteration, KeyError) as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: cannot read video ({msg})") from None
    if not frames:
        raise ValueError(f"{path}: the video has no frames")
    if size and (w, h) != tuple(size):
        from PIL import Image

        frames = [np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BOX)) for f in frames]
    return np.stack(frames), float(fps or meta.get("fps") or 0)
