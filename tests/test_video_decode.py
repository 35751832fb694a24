"""Video decoding, sampling and shot boundaries on generated videos whose cuts are known."""

from __future__ import annotations

import signal

import numpy as np
import pytest

pytest.importorskip("av")

from videogen import shot_video  # noqa: E402

from evo.data.video import ClipReader, Sampling, VideoError, boundary_scores, iter_frames, probe, read_clip  # noqa: E402
from evo.errors import ConfigError, UnknownNameError  # noqa: E402


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "shots.mp4"
    return path, shot_video(path, 12, seed=3)


def test_probe_and_streamed_batches_cover_every_frame_once(video):
    path, truth = video
    info = probe(path)
    n = round(truth[-1].end * 25)
    assert (info.width, info.height, info.fps) == (64, 64, 25.0) and info.frames == n
    sizes, times = [], []
    for b in iter_frames(path, batch=16):
        assert b.frames.dtype == np.uint8 and b.frames.shape[1:] == (64, 64, 3)
        sizes.append(len(b.frames))
        times.append(b.time)
    t = np.concatenate(times)
    assert max(sizes) == 16 and sum(sizes) == n
    assert np.allclose(t, np.arange(n) / 25)


def test_window_and_size(video):
    path, _ = video
    batches = list(iter_frames(path, start=2.0, end=3.0, size=(24, 40)))
    t = np.concatenate([b.time for b in batches])
    assert batches[0].frames.shape[1:] == (24, 40, 3)
    assert t.min() >= 2.0 - 1e-6 and t.max() < 3.0 and len(t) == 25


def test_uniform_sampling_spreads_n_frames(video):
    path, truth = video
    frames, times, shots, _ = read_clip(path, Sampling(mode="uniform", frames=10, detector=None))
    assert len(frames) == 10 and (shots == 0).all()
    step = truth[-1].end / 10
    assert np.allclose(times, (np.arange(10) + 0.5) * step, atol=0.021)


def test_fps_sampling(video):
    path, truth = video
    _, times, _, _ = read_clip(path, Sampling(mode="fps", fps=4, detector=None))
    assert len(times) == pytest.approx(truth[-1].end * 4, abs=1)
    assert np.allclose(np.diff(times), 0.25, atol=0.041)


def test_fps_above_the_videos_rate_samples_every_frame_once(video):
    """The rate is capped at the video's own: 1e9 fps used to walk a target every nanosecond (a hang)."""
    path, _ = video

    def hung(*_):
        raise TimeoutError("fps=1e9 sampling did not finish in 10 s")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        _, times, _, _ = read_clip(path, Sampling(mode="fps", fps=1e9, detector=None))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    n = probe(path).frames
    assert len(times) == n and np.allclose(times, np.arange(n) / 25)


@pytest.mark.parametrize("detector", ["content", "histogram"])
def test_shot_boundaries_match_known_cuts(video, detector):
    path, truth = video
    reader = ClipReader(path, Sampling(mode="fps", fps=2, detector=detector))
    list(reader)
    found = [s.start for s in reader.shots[1:]]
    scores = boundary_scores(found, [s.start for s in truth[1:]], tolerance=0.081)
    assert scores["precision"] >= 0.9 and scores["recall"] >= 0.9, scores
    assert reader.shots[-1].end == pytest.approx(truth[-1].end, abs=0.05)


@pytest.mark.parametrize("detector", ["content", "histogram"])
def test_motion_and_noise_inside_one_shot_is_not_a_cut(tmp_path, detector):
    truth = shot_video(tmp_path / "one.mp4", 1, seed=9, shot_seconds=(6.0, 6.0), noise=10.0)
    reader = ClipReader(tmp_path / "one.mp4", Sampling(mode="fps", fps=1, detector=detector))
    list(reader)
    assert len(reader.shots) == 1 and reader.shots[0].end == pytest.approx(truth[0].end, abs=0.05)


def test_shot_keyframes_fall_inside_their_shots(video):
    path, truth = video
    frames, times, shot_ids, shots = read_clip(path, Sampling(mode="shots", frames=2))
    assert len(shots) == len(truth) and len(frames) == 2 * len(truth)
    for t, s in zip(times, shot_ids, strict=True):
        assert truth[s].start <= t < truth[s].end


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="mode"):
        Sampling(mode="every")
    with pytest.raises(ConfigError, match="frames"):
        Sampling(frames=0)
    with pytest.raises(UnknownNameError, match="histogram"):
        Sampling(detector="nope")
    with pytest.raises(ConfigError, match="threshold"):
        from evo.data.video import make_detector

        make_detector("histogram", threshold=2.0)


def test_empty_window_is_reported(video):
    path, _ = video
    with pytest.raises(VideoError, match="zero length"):
        ClipReader(path, Sampling(), start=3.0, end=3.0)
    with pytest.raises(VideoError, match="no decodable frame"):
        list(iter_frames(path, start=500.0))


def test_boundary_scores_reference():
    s = boundary_scores([1.0, 2.05, 5.0], [1.0, 2.0, 3.0, 4.0], tolerance=0.1)
    assert (s["precision"], s["recall"]) == (pytest.approx(2 / 3), 0.5)


def test_uniform_segment_running_past_the_end_is_clamped(video):
    path, truth = video
    end = truth[-1].end
    _, times, _, _ = read_clip(path, Sampling(mode="uniform", frames=6, detector=None), start=end - 2, end=end + 100)
    assert len(times) == 6 and times.min() >= end - 2 and times.max() < end


def test_mpeg_ts_with_a_nonzero_start_pts_and_inexact_seeking(tmp_path):
    import av

    path = tmp_path / "t.ts"
    with av.open(str(path), "w") as o:
        s = o.add_stream("mpeg2video", rate=25)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        for i in range(50):
            o.mux(s.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 4 * i, np.uint8), format="rgb24")))
        o.mux(s.encode(None))
    t = np.concatenate([b.time for b in iter_frames(path)])
    assert np.allclose(t, np.arange(50) / 25)  # times from the first frame, not the container's clock
    t = np.concatenate([b.time for b in iter_frames(path, start=1.0)])
    assert np.allclose(t, np.arange(25, 50) / 25)  # no frame lost to a seek that overshot
