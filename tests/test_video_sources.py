"""Video sources: a class folder and a CSV manifest of segments; splits by clip; bad files are listed, not fatal."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

av = pytest.importorskip("av")

from videogen import collection, shot_video  # noqa: E402

from evo.data import holdout_split, load_source  # noqa: E402
from evo.data.video import VideoError, boundary_scores, iter_frames, load_videos  # noqa: E402
from evo.errors import DataError  # noqa: E402


@pytest.fixture(scope="module")
def coll(tmp_path_factory):
    root = tmp_path_factory.mktemp("coll")
    truth = collection(root, n_classes=3, clips_per_class=5, shots_per_clip=2)
    return root, truth


def _clean(train, test):
    assert not set(train.clip.tolist()) & set(test.clip.tolist())


def test_folder_source_splits_by_clip(coll):
    root, truth = coll
    train, test = load_videos(root, frames=4, sampling="uniform")
    _clean(train, test)
    assert len(train.clips) == len(truth) and not train.data.skipped
    for vf in (train, test):
        assert (vf.data.groups == vf.clip).all()
        for c in np.unique(vf.clip):  # every frame of a clip is on this side, with the clip's label
            rows = vf.clip == c
            assert rows.sum() == 4
            assert vf.data.classes[vf.data.labels[rows][0]] == vf.clips[c].label
    assert train.data.present_classes() == test.data.present_classes() == ["Pullover", "T-shirt-top", "Trouser"]
    # the plain source gives the same frames as ImageSets, groups kept
    a, b = load_source(root, frames=4)
    assert a.groups is not None and len(a) == len(train) and len(b) == len(test)


def test_shot_ids_follow_the_known_cuts(coll):
    root, truth = coll
    train, _ = load_videos(root, sampling="shots", frames=2, test_fraction=0.0)
    found, true = [], []
    for c, clip in enumerate(train.clips):
        found += [(c, s.start) for s in clip.shots[1:]]
        true += [(c, s.start) for s in truth[clip.path][1:]]
        rows = np.flatnonzero(train.clip == c)
        assert len(rows) == 2 * len(clip.shots)
        for t, s in zip(train.time[rows], train.shot[rows], strict=True):
            assert clip.shots[s].start <= t < clip.shots[s].end
    # cuts are matched within one clip only: offset each clip's times far apart
    scores = boundary_scores([c * 1e3 + t for c, t in found], [c * 1e3 + t for c, t in true], tolerance=0.081)
    assert scores["precision"] >= 0.9 and scores["recall"] >= 0.8, scores


def test_grouped_holdout_never_splits_a_clip(coll):
    root, _ = coll
    data, _ = load_source(root, frames=4, test_fraction=0.0)
    for seed in range(5):
        fit, val = holdout_split(data, 0.3, seed=seed)
        assert len(val) and not set(fit.groups.tolist()) & set(val.groups.tolist())


def test_manifest_segments_of_one_long_video(tmp_path):
    truth = shot_video(tmp_path / "long.mp4", 8, seed=4)
    rows = ["path,label,start,end"] + [f"long.mp4,{s.label},{s.start},{s.end}" for s in truth]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    train, test = load_videos(tmp_path / "m.csv", frames=3, detector=None, test_fraction=0.0)
    assert len(train.clips) == 8 and len(test) == 0
    for c, clip in enumerate(train.clips):
        t = train.time[train.clip == c]
        assert len(t) == 3 and (t >= clip.start).all() and (t < clip.end).all()
        assert train.data.classes[train.data.labels[train.clip == c][0]] == truth[c].label


def _bad_files(root, good):
    """A corrupt file, a truncated one, a 0-byte one, an audio-only one, an empty container and an
    unsupported codec, next to good clips."""
    d = root / "Trouser"
    data = good.read_bytes()
    (d / "corrupt.mp4").write_bytes(b"not a video" * 100)
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (d / "zero_bytes.mp4").write_bytes(b"")
    with av.open(str(d / "audio_only.mp4"), "w") as o:
        s = o.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for _ in range(10):
            frame.pts = None
            for p in s.encode(frame):
                o.mux(p)
        for p in s.encode(None):
            o.mux(p)
    with av.open(str(d / "no_frames.avi"), "w") as o:
        s = o.add_stream("mpeg4", rate=25)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        o.start_encoding()  # header written, no frame ever encoded
        for p in s.encode(None):
            o.mux(p)
    with av.open(str(d / "codec.avi"), "w") as o:
        s = o.add_stream("mpeg4", rate=25)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        for i in range(5):
            o.mux(s.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), 9 * i, np.uint8), format="rgb24")))
        o.mux(s.encode(None))
    raw = (d / "codec.avi").read_bytes()
    assert b"FMP4" in raw
    (d / "codec.avi").write_bytes(raw.replace(b"FMP4", b"QQQQ"))  # a FourCC no decoder knows
    return {"corrupt.mp4": "corrupt", "truncated.mp4": "truncated", "zero_bytes.mp4": "zero length",
            "audio_only.mp4": "audio-only", "no_frames.avi": "zero length", "codec.avi": "unsupported codec"}


def test_bad_files_are_reported_and_the_rest_is_read(coll, tmp_path):
    root, truth = coll
    shutil.copytree(root, tmp_path / "c")
    expect = _bad_files(tmp_path / "c", next(iter(tmp_path.glob("c/Trouser/*.mp4"))))
    for name, reason in expect.items():
        with pytest.raises(VideoError) as e:
            list(iter_frames(tmp_path / "c" / "Trouser" / name))
        assert name in str(e.value) and reason in str(e.value), str(e.value)
    train, test = load_videos(tmp_path / "c", frames=2, detector=None)
    assert len(set(train.clip.tolist()) | set(test.clip.tolist())) == len(truth)  # every good clip was read
    skipped = train.data.skipped
    assert len(skipped) == len(expect)
    for name, reason in expect.items():
        line = next(s for s in skipped if name in s)
        assert reason in line, line


def test_a_folder_of_only_bad_videos_is_a_data_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.mp4").write_bytes(b"junk")
    with pytest.raises(DataError, match="none of its 1 videos"):
        load_source(tmp_path, frames=2)


def test_zero_length_segment_in_a_manifest_is_skipped(tmp_path):
    shot_video(tmp_path / "v.mp4", 2, seed=1)
    (tmp_path / "m.csv").write_text("v.mp4,a,0,1\nv.mp4,b,1.5,1.5\nv.mp4,b,1.5,2.5\n")
    train, test = load_videos(tmp_path / "m.csv", frames=2, detector=None, test_fraction=0.0)
    assert len(train.clips) == 2 and len(train.data.skipped) == 1 and "zero length" in train.data.skipped[0]


def test_manifest_errors_name_the_line(tmp_path):
    (tmp_path / "m.csv").write_text("v.mp4,a,zero\n")
    with pytest.raises(DataError, match=r"m.csv:1: start"):
        load_videos(tmp_path / "m.csv")
