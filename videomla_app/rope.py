"""3D rotary position embedding (Wan's t/h/w split) and its decoupled MLA subset.

Wan rotates each 128-channel head with three independent 1-D RoPEs: channels are split
temporal/height/width = 44/42/42 (22/21/21 complex pairs of *adjacent* channels), each axis with
its own frequency table ``theta ** (-2i / axis_dim)``. VideoMLA's shared positional key keeps only
the highest-frequency pairs of each axis: t/h/w = 6/5/5 pairs = 32 channels (PAPER §4.4).

Angles are always computed in fp32 from integer positions: a 2-minute video reaches positions in the
hundreds of frames, far too coarse for bf16.

Window re-indexing (PAPER §4.8): cached positional keys are stored unrotated. At each read the
sink frames keep their own temporal index, the remaining cached frames and the query chunk get
contiguous window-local indices right after the sink. See :func:`window_local_frames`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def wan_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Wan's per-head channel split: d - 4*(d//6) / 2*(d//6) / 2*(d//6) (44/42/42 for d = 128)."""
    k = head_dim // 6
    return (head_dim - 4 * k, 2 * k, 2 * k)


@dataclass(frozen=True)
class RopeSpec:
    """Which complex pairs of which axis tables a rotated vector uses.

    ``axis_dims`` are the channel counts of Wan's full per-head tables (they fix the frequencies);
    ``pairs`` is how many of each table's pairs are used, lowest index (= highest frequency) first.
    The full Wan head uses all pairs; the MLA positional key uses (6, 5, 5).
    """

    axis_dims: tuple[int, int, int]
    pairs: tuple[int, int, int]
    theta: float = 10000.0

    def __post_init__(self) -> None:
        for d, p in zip(self.axis_dims, self.pairs):
            if d % 2 or p > d // 2 or p < 0:
                raise ValueError(f"bad RoPE spec: axis dims {self.axis_dims}, pairs {self.pairs}")

    @classmethod
    def full(cls, head_dim: int, theta: float = 10000.0) -> "RopeSpec":
        dims = wan_axis_dims(head_dim)
        return cls(dims, tuple(d // 2 for d in dims), theta)  # type: ignore[arg-type]

    @classmethod
    def decoupled(cls, head_dim: int, pairs: tuple[int, int, int], theta: float = 10000.0) -> "RopeSpec":
        return cls(wan_axis_dims(head_dim), pairs, theta)

    @property
    def dim(self) -> int:
        """Rotated channels (2 per pair)."""
        return 2 * sum(self.pairs)

    def frequencies(self) -> torch.Tensor:
        """[n_pairs] fp32 angular frequencies, axis by axis (t, then h, then w)."""
        parts = []
        for d, p in zip(self.axis_dims, self.pairs):
            i = torch.arange(p, dtype=torch.float64)
            parts.append(self.theta ** (-2.0 * i / d))
        return torch.cat(parts).to(torch.float32)


def grid_positions(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Integer (t, h, w) positions of the tokens of ``len(frames)`` latent frames, frame-major.

    frames: [F] temporal index of each frame. Returns [F*height*width, 3] int64.
    """
    f = frames.to(torch.int64).view(-1, 1, 1).expand(-1, height, width)
    h = torch.arange(height).view(1, -1, 1).expand(frames.numel(), -1, width)
    w = torch.arange(width).view(1, 1, -1).expand(frames.numel(), height, -1)
    return torch.stack([f, h, w], dim=-1).reshape(-1, 3)


def rope_angles(spec: RopeSpec, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [N, n_pairs] (fp32) for integer positions [N, 3]."""
    freqs = spec.frequencies().to(positions.device)  # [P]
    axis = torch.repeat_interleave(torch.arange(3, device=positions.device),
                                   torch.tensor(spec.pairs, device=positions.device))  # [P]
    pos = positions.to(torch.float32)[:, axis]  # [N, P]
    ang = pos * freqs  # [N, P], fp32 from integer positions
    return torch.cos(ang), torch.sin(ang)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (2i, 2i+1) of ``x`` [..., 2P] by angles whose cos/sin broadcast
    against [..., P] (e.g. [N, P] for x [B, N, 2P]; [N, 1, P] for x [B, N, H, 2P]).

    out[2i] = x[2i] cos - x[2i+1] sin,  out[2i+1] = x[2i] sin + x[2i+1] cos.
    The rotation runs in fp32 and returns ``x``'s dtype.
    """
    xf = x.float().unflatten(-1, (-1, 2))  # [..., P, 2]
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


def window_local_frames(frames: list[int], sink_frames: int, first_window_frame: int) -> list[int]:
    """Window-local temporal index of each frame (PAPER §4.8, following Infinity-RoPE).

    Sink frames (index < ``sink_frames``) keep their own index; every later frame ``f`` is placed
    right after the sink: ``f - first_window_frame + sink_frames``. Query chunk and cached keys use
    the same map, so relative distances inside the window are unchanged while all angles stay in
    the short range seen in training, however long the video gets.
    """
    base = max(first_window_frame, sink_frames)
    return [f if f < sink_frames else f - base + sink_frames for f in frames]
