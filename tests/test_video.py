"""Video files, the text overlay, dashboard previews and the live window (on SDL's dummy driver)."""

import imageio
import imageio.v3 as iio
import numpy as np
import pytest

from training.video import LiveViewer, PreviewFrames, encode_gif, overlay_text, write_video


def _frames(n, h, w):
    rng = np.random.default_rng(0)
    return [np.full((h, w, 3), rng.integers(0, 255, 3), dtype=np.uint8) for _ in range(n)]


def test_mp4_keeps_every_frame_even_at_odd_sizes(tmp_path):
    path = write_video(tmp_path / "odd.mp4", _frames(23, 37, 51), fps=30)
    reader = imageio.get_reader(path)
    assert reader.count_frames() == 23
    assert reader.get_meta_data()["size"] == (52, 38)  # padded to even sides for H.264's 4:2:0 chroma


def test_gif_bytes_and_grayscale_frames():
    gif = encode_gif([np.full((8, 8), v, np.uint8) for v in (0, 128, 255)], fps=10)
    assert gif[:6] == b"GIF89a"
    assert iio.improps(gif, extension=".gif", index=None).shape == (3, 8, 8, 3)
    with pytest.raises(ValueError, match="HxWx3"):
        encode_gif([], fps=10)


def test_overlay_draws_text_and_scales_small_frames_up():
    frame = np.zeros((210, 160, 3), np.uint8)
    out = overlay_text(frame, ["step 3", "return 1.0", "value 0.50"])
    assert out.shape == (420, 320, 3)  # Atari-sized frames are doubled so the text stays legible
    assert out[:40, :80].max() == 255 and out[200:].max() == 0  # white text top-left, the rest untouched


def test_preview_keeps_at_most_max_frames_and_fits_max_side():
    preview = PreviewFrames(max_side=100, max_frames=10)
    for frame in _frames(55, 400, 600):
        preview.append(frame)
    frames = preview.result()
    assert 5 <= len(frames) <= 10 and frames[0].shape == (67, 100, 3)


def test_live_viewer_shows_frames_and_stops_when_closed(monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    viewer = LiveViewer("test", fps=1000)
    try:
        assert viewer.show(np.zeros((210, 160, 3), np.uint8))
        assert viewer.screen.get_size() == (480, 630)  # scaled so the short side is >= 480 px
        pg = viewer.pygame
        pg.event.post(pg.event.Event(pg.QUIT))
        assert viewer.show(np.zeros((210, 160, 3), np.uint8)) is False
    finally:
        viewer.close()
