"""Record a generation to disk while it streams: the MP4 grows chunk by chunk, the session file
follows it. Front ends iterate :meth:`Recording.chunks` and only render the events.

Guarantees (tested): every finished chunk is in a playable MP4 at every moment; a stop, Ctrl-C or
error keeps all finished chunks at the final path (or ``.partial.mp4`` if the process is killed);
the session file always describes exactly the frames in the video; an existing file is never
replaced unless ``force``. Extending (``base_video``) writes only the new frames, then joins them
to the old ones without re-encoding.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .encoders import pixel_frames
from .pipeline import ChunkEvent, GenerationState, StreamingPipeline
from .session import save_session
from .timeline import Timeline
from .video_io import StreamingMP4Writer, concat_videos, partial_path

SESSION_SUFFIX = ".session.safetensors"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def session_path_for(video: str | Path) -> Path:
    v = Path(video)
    return v.with_name(v.stem + SESSION_SUFFIX)


@dataclass
class Recording:
    pipe: StreamingPipeline
    timeline: Timeline
    out: Path
    state: GenerationState
    settings: dict  # model, seed, steps, window, sink, dtype ... (metadata and extend)
    force: bool = False
    base_video: Path | None = None  # extend: the clip the new frames follow
    base_frames: int = 0
    prefix_frames: object = None  # extend a foreign clip: its frames (uint8 [n, H, W, 3]) are re-encoded first
    session_every_s: float = 30.0
    frames_written: int = 0
    chunks_done: int = 0
    finished: bool = False
    session_ok: bool = True  # False when an interrupt left no consistent state to save
    failure: str | None = None  # what went wrong while finishing (disk full, ffmpeg error)
    _last_session: float = field(default=0.0, repr=False)

    @property
    def session_path(self) -> Path:
        return session_path_for(self.out)

    def metadata(self) -> dict:
        return {"app": "videomla", "version": __version__, **self.settings,
                "timeline": [[s.start_s, s.prompt] for s in self.timeline.segments],
                "session": self.session_path.name}

    def planned_seconds(self, n_chunks: int) -> float:
        """The video's length (s) once ``n_chunks`` more chunks are written: whole chunks, so it can
        exceed the length asked for by up to a chunk (what progress counts towards)."""
        ts, start = self.pipe.vae.temporal_stride, self.state.frame
        added = pixel_frames(start + n_chunks * self.pipe.C, ts) - pixel_frames(start, ts)
        return (self.base_frames + added) / self.pipe.preset.video.fps

    def _chunk_frames(self) -> tuple[int, int]:
        ts, C = self.pipe.vae.temporal_stride, self.pipe.C
        start = self.state.frame
        first = pixel_frames(start + C, ts) - pixel_frames(start, ts)
        return first, pixel_frames(2 * C, ts) - pixel_frames(C, ts)

    def chunks(self, n_chunks: int, stop: Callable[[], bool] | None = None) -> Iterator[ChunkEvent]:
        """Generate ``n_chunks`` chunks, writing each as it arrives; yields the pipeline's events."""
        target = self.out if self.base_video is None else self.out.with_name(self.out.stem + ".new" + self.out.suffix)
        if self.out.exists() and not self.force and self.out != self.base_video:
            raise FileExistsError(f"{self.out} exists (use --force to replace it)")
        v = self.pipe.preset.video
        writer = StreamingMP4Writer(target, v.fps, (v.width, v.height), metadata=self.metadata(), overwrite=True,
                                    chunk_frames=None if self.prefix_frames is not None else self._chunk_frames())
        if self.prefix_frames is not None:
            writer.write(self.prefix_frames)
        self._last_session = time.monotonic()
        boundary = self.state.snapshot()
        try:
            for ev in self.pipe.stream(self.timeline, n_chunks, state=self.state, stop=stop):
                writer.write(ev.frames)
                self.frames_written += len(ev.frames)
                self.chunks_done += 1
                boundary = self.state.snapshot()
                self._maybe_save_session(ev)
                yield ev
        except BaseException:
            try:  # interrupted inside a chunk: go back to the last finished one
                self.state.restore(boundary)
            except RuntimeError:
                self.session_ok = False
            raise
        finally:
            self._finish(writer, target)

    def _maybe_save_session(self, ev: ChunkEvent) -> None:
        small = ev.memory is not None and ev.memory.cache_bytes < 64e6
        if small or time.monotonic() - self._last_session > self.session_every_s:
            try:
                self._save_session()
            except OSError:
                pass  # e.g. disk full: the final save in _finish reports it

    def _save_session(self, video_sha256: str | None = None) -> None:
        extra = {"settings": self.settings, "pixel_frames": self.base_frames + self.frames_written,
                 "video": self.out.name}
        if video_sha256:
            extra["video_sha256"] = video_sha256  # binds the session to exactly this file
        save_session(self.session_path, self.pipe, self.state, self.timeline, extra)
        self._last_session = time.monotonic()

    def _finish(self, writer: StreamingMP4Writer, target: Path) -> None:
        """Land the video at its final path whatever happened; keep the session in step with it.

        If the disk fills up (or ffmpeg fails) the fragmented partial file keeps every fragment
        that reached the disk, and ``failure`` says where it is."""
        if self.frames_written == 0:
            writer.abort()
            partial_path(target).unlink(missing_ok=True)
            return
        try:
            writer.close()
            if self.base_video is not None:
                concat_videos([self.base_video, target], self.out, self.metadata())
                target.unlink(missing_ok=True)
        except OSError as e:
            kept = partial_path(target) if partial_path(target).exists() else target
            self.failure = f"{e}; the finished part is kept in {kept}"
            self.session_path.unlink(missing_ok=True)  # it would not match the video
            return
        self.finished = True
        if not self.session_ok:
            self.session_path.unlink(missing_ok=True)  # an older session would not match the video
            return
        try:
            self._save_session(file_sha256(self.out))
        except OSError as e:
            self.session_ok = False
            self.session_path.unlink(missing_ok=True)
            self.failure = f"the video is complete at {self.out}, but its session could not be saved ({e})"
