"""Frames to files and screens: MP4 and GIF through imageio (imageio-ffmpeg's wheel carries ffmpeg, so no
system ffmpeg is needed), a text overlay, and a live pygame window where a display exists.

Everything here works headless: `use_dummy_video_driver_if_headless()` points SDL (which gymnasium's
classic-control renderers use even for `rgb_array`) at its dummy driver when there is no display.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def has_display() -> bool:
    """Whether a window can be opened: an X11 or Wayland display on Linux; always on macOS and Windows."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def use_dummy_video_driver_if_headless() -> None:
    """Without a display, SDL's default driver fails to initialise; its dummy driver renders off-screen.
    Must run before pygame initialises its display (that is, before the first render)."""
    if not has_display() and "SDL_VIDEODRIVER" not in os.environ:
        os.environ["SDL_VIDEODRIVER"] = "dummy"
        os.environ.setdefault("SDL_AUDIODRIVER", "dummy")


def _even(frames: np.ndarray) -> np.ndarray:
    # H.264 with 4:2:0 chroma needs even width and height; pad by one edge row/column where odd.
    h, w = frames.shape[1:3]
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge") if h % 2 or w % 2 else frames


def _as_rgb(frames: Sequence[np.ndarray]) -> np.ndarray:
    arr = np.asarray(frames, dtype=np.uint8)
    if arr.ndim == 3:  # grayscale [T, H, W]
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 4 or arr.shape[-1] != 3 or len(arr) == 0:
        raise ValueError(f"expected a non-empty sequence of HxWx3 frames, got shape {arr.shape}")
    return arr


class VideoWriter:
    """Streams frames into an H.264 MP4 (yuv420p, which every player opens) or, for a `.gif` path,
    collects them and writes an animated GIF on close. One video frame per appended frame."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps = Path(path), fps
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.gif = self.path.suffix.lower() == ".gif"
        self.frames: list[np.ndarray] = []
        self.count = 0
        self.writer = None
        if not self.gif:
            import imageio

            # macro_block_size=1 keeps the frame size (the default rescales to multiples of 16).
            self.writer = imageio.get_writer(self.path, format="FFMPEG", fps=fps, codec="libx264", quality=7,
                                             pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error")  # fmt: skip

    def append(self, frame: np.ndarray) -> None:
        if self.gif:
            self.frames.append(np.asarray(frame, dtype=np.uint8))
        else:
            self.writer.append_data(_even(_as_rgb([frame]))[0])
        self.count += 1

    def close(self) -> Path:
        if self.gif:
            self.path.write_bytes(encode_gif(self.frames, self.fps))
            self.frames = []
        elif self.writer is not None:
            self.writer.close()
            self.writer = None
        return self.path


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float) -> Path:
    """MP4 or GIF (by the path's suffix) of the given frames."""
    writer = VideoWriter(path, fps)
    try:
        for frame in frames:
            writer.append(frame)
    finally:
        writer.close()
    return writer.path


def encode_gif(frames: Sequence[np.ndarray], fps: float) -> bytes:
    """An animated GIF that loops forever, as bytes."""
    import imageio.v3 as iio

    # Browsers play frame delays under 20 ms as 100 ms, so faster GIFs would play slower.
    duration = max(20.0, 1000.0 / fps)
    return iio.imwrite("<bytes>", _as_rgb(frames), extension=".gif", duration=duration, loop=0)


class PreviewFrames:
    """A light copy of an episode for dashboards, kept while it plays: every k-th pixel so the longer side
    fits max_side, and at most max_frames frames (when full, every other frame is dropped and from then on
    only every 2nd, 4th, ... frame is kept: long episodes become choppier, not longer)."""

    def __init__(self, max_side: int = 320, max_frames: int = 250):
        self.max_side, self.max_frames = max_side, max_frames
        self.frames: list[np.ndarray] = []
        self.stride, self.seen = 1, 0

    def append(self, frame: np.ndarray) -> None:
        if self.seen % self.stride == 0:
            k = max(1, -(-max(frame.shape[:2]) // self.max_side))
            self.frames.append(np.ascontiguousarray(frame[::k, ::k]))
            if len(self.frames) >= 2 * self.max_frames:
                self.frames, self.stride = self.frames[::2], self.stride * 2
        self.seen += 1

    def result(self) -> list[np.ndarray]:
        step = max(1, -(-len(self.frames) // self.max_frames))
        return self.frames[::step]


def overlay_text(frame: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """A copy of frame with lines of text in its top-left corner, white on a dark box (readable on any
    background). Frames narrower than 320 px are scaled up first so the text stays legible."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(_as_rgb([frame])[0])
    if image.width < 320:
        scale = -(-320 // image.width)
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    font = ImageFont.load_default(size=max(12, image.width // 40))
    draw = ImageDraw.Draw(image, "RGBA")
    text = "\n".join(lines)
    box = draw.multiline_textbbox((6, 4), text, font=font)
    draw.rectangle((box[0] - 4, box[1] - 3, box[2] + 4, box[3] + 3), fill=(0, 0, 0, 150))
    draw.multiline_text((6, 4), text, font=font, fill=(255, 255, 255, 255))
    return np.asarray(image)


class LiveViewer:
    """A pygame window that shows frames at a fixed rate; small frames (Atari's 160x210) are scaled up.
    `show` returns False once the user closes the window or presses Escape or Q."""

    def __init__(self, title: str, fps: float, min_side: int = 480):
        import pygame

        self.pygame = pygame
        pygame.display.init()
        self.title, self.fps, self.min_side = title, fps, min_side
        self.screen = None
        self.clock = pygame.time.Clock()

    def show(self, frame: np.ndarray) -> bool:
        pg = self.pygame
        frame = _as_rgb([frame])[0]
        surface = pg.surfarray.make_surface(frame.swapaxes(0, 1))
        scale = max(1, self.min_side // min(frame.shape[:2]))
        size = (frame.shape[1] * scale, frame.shape[0] * scale)
        if self.screen is None or self.screen.get_size() != size:
            self.screen = pg.display.set_mode(size)
            pg.display.set_caption(self.title)
        self.screen.blit(pg.transform.scale(surface, size) if scale > 1 else surface, (0, 0))
        pg.display.flip()
        self.clock.tick(self.fps)
        for event in pg.event.get():
            if event.type == pg.QUIT or (event.type == pg.KEYDOWN and event.key in (pg.K_ESCAPE, pg.K_q)):
                return False
        return True

    def close(self) -> None:
        self.pygame.display.quit()
