"""Frame → shot → clip aggregation, smoothing, shot frames for corrections, and `evo predict RUN VIDEO`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")

from videogen import collection, colour_video, shot_video  # noqa: E402

from evo.cli import main  # noqa: E402
from evo.data.video.predict import predict_video, shot_frames, smooth_shots  # noqa: E402
from evo.data.video.shots import Shot  # noqa: E402
from evo.errors import ConfigError, DataError  # noqa: E402

CLASSES = ["0", "1", "2"]
SHOTS = [(0, 40), (2, 30), (1, 50), (2, 35), (0, 45)]  # (class, frames at 25 fps)


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    path = tmp_path_factory.mktemp("c") / "colours.mp4"
    return path, colour_video(path, SHOTS)


def noisy_colour_classifier(flip: float, seed: int = 0):
    """Right (brightest channel) except a seeded fraction `flip` of frames sent to a wrong class."""
    rng = np.random.default_rng(seed)
    state = {"wrong": 0, "n": 0}

    def predict_proba(frames: np.ndarray) -> np.ndarray:
        k = frames.reshape(len(frames), -1, 3).mean(1).argmax(1)
        bad = rng.random(len(frames)) < flip
        k = np.where(bad, (k + 1 + rng.integers(0, 2, len(k))) % 3, k)
        state["wrong"] += int(bad.sum())
        state["n"] += len(frames)
        p = np.full((len(frames), 3), 0.1)
        p[np.arange(len(frames)), k] = 0.8
        return p

    return predict_proba, state


def test_shots_and_clip_from_noisy_frames(colours):
    path, truth = colours
    fn, state = noisy_colour_classifier(0.25)
    pred = predict_video(path, fn, CLASSES, fps=10, detector="histogram", batch=7)  # >= 12 frames a shot
    assert state["wrong"] > 0  # frame level is wrong on some frames ...
    assert [s.label for s in pred.shots] == [t.label for t in truth]  # ... shot level is right on all
    for s, t in zip(pred.shots, truth, strict=True):
        assert s.start == pytest.approx(t.start, abs=0.05) and s.end == pytest.approx(t.end, abs=0.05)
        assert s.frames >= 12
    assert pred.label == "2" and pred.frames == state["n"]  # class 2 holds the most frames (65 of 200)
    assert pred.decoded == sum(n for _, n in SHOTS)
    assert np.allclose(pred.shot_probabilities.sum(1), 1.0)


def test_features_aggregation_applies_the_head_to_mean_features(colours):
    path, truth = colours

    def embed(frames):
        return frames.reshape(len(frames), -1, 3).mean(1) / 255

    def head(features):
        z = np.exp(10 * features)
        return z / z.sum(1, keepdims=True)

    pred = predict_video(path, None, CLASSES, fps=5, detector="histogram", aggregate="features", embed=embed,
                         head=head)
    assert [s.label for s in pred.shots] == [t.label for t in truth]
    assert pred.probability < 0.9  # the clip mixes all three colours


def test_smoothing_over_neighbouring_shots():
    shots = [Shot(0, 0, 4), Shot(1, 4, 4.5), Shot(2, 4.5, 9)]
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.9, 0.1]])
    out = smooth_shots(proba, shots, 1)
    assert out[1].argmax() == 0 and out[0].argmax() == 0
    assert np.allclose(out.sum(1), 1) and np.array_equal(smooth_shots(proba, shots, 0), proba)


def test_bad_arguments(colours):
    path, _ = colours
    with pytest.raises(ConfigError, match="features"):
        predict_video(path, None, CLASSES, aggregate="features")
    with pytest.raises(ConfigError, match="smooth"):
        predict_video(path, lambda x: x, CLASSES, smooth=-1)
    with pytest.raises(DataError, match="columns"):
        predict_video(path, lambda f: np.ones((len(f), 2)) / 2, CLASSES, detector="histogram")


def test_shot_frames_by_number_and_time(colours):
    path, truth = colours
    frames, shot = shot_frames(path, shot=2, frames=4, detector="histogram")
    assert len(frames) == 4 and shot.start == pytest.approx(truth[2].start, abs=0.05)
    assert (frames.reshape(4, -1, 3).mean(1).argmax(1) == 1).all()
    frames, shot = shot_frames(path, at=truth[3].start + 0.3, frames=3, detector="histogram")
    assert shot.index == 3 and (frames.reshape(3, -1, 3).mean(1).argmax(1) == 2).all()
    with pytest.raises(DataError, match="5 shots"):
        shot_frames(path, shot=9, detector="histogram")
    with pytest.raises(DataError, match="outside"):
        shot_frames(path, at=99.0, detector="histogram")


def test_cli_predict_learned_run(tmp_path, capsys):
    collection(tmp_path / "coll", n_classes=3, clips_per_class=3, shots_per_clip=1, size=32)
    truth = shot_video(tmp_path / "q.mp4", 4, seed=2, size=32)
    run, video = str(tmp_path / "run"), str(tmp_path / "q.mp4")
    assert main(["learn", "small_cnn", "--data", str(tmp_path / "coll"), "--run-dir", run, "--no-progress",
                 "--memory", "50"]) == 0
    capsys.readouterr()
    assert main(["predict", run, video, "--json", "--strip", str(tmp_path / "strip.png")]) == 0
    doc = json.loads(capsys.readouterr().out)["videos"][0]  # `evo predict` answers images and videos together
    from PIL import Image

    with Image.open(tmp_path / "strip.png") as strip:  # one captioned keyframe per shot
        assert strip.size == (96 * len(truth), 96 + 28)
    assert len(doc["shots"]) == len(truth)
    assert doc["label"] in {"Pullover", "T-shirt-top", "Trouser"}
    for s, t in zip(doc["shots"], truth, strict=True):
        assert s["start"] == pytest.approx(t.start, abs=0.05) and 0 <= s["probability"] <= 1
    assert main(["predict", run, video, "--aggregate", "features", "--smooth", "1"]) == 0
    out = capsys.readouterr().out
    assert f"over {len(truth)} shots" in out and len(out.strip().splitlines()) == 2 + len(truth)
    assert main(["predict", run, str(tmp_path / "coll")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "coll" in err[0]


def test_clip_scores_reference():
    from evo.data import ImageSet
    from evo.data.video import VideoFrames, clip_scores

    labels, clip = np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1])
    data = ImageSet(np.zeros((4, 2, 2, 3), np.uint8), labels, ["a", "b"], groups=clip)
    vf = VideoFrames(data, clip, np.zeros(4, np.int64), np.zeros(4), [])
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.7, 0.3]])
    s = clip_scores(vf, proba, ["a", "b"])
    assert (s["frame_accuracy"], s["clip_accuracy"]) == (0.5, 1.0)
    s = clip_scores(vf, proba[:, ::-1], ["b", "a"])  # the model's class order differs: matched by name
    assert (s["frame_accuracy"], s["clip_accuracy"]) == (0.5, 1.0)


def test_cli_correct_a_video_shot(tmp_path, capsys):
    """`evo correct RUN VIDEO --shot N` is one correction (the shot's keyframes' mean feature), undone exactly."""
    from evo.active import Corrections

    collection(tmp_path / "coll", n_classes=3, clips_per_class=3, shots_per_clip=1, size=32)
    shot_video(tmp_path / "q.mp4", 3, seed=5, size=32)
    run, video = str(tmp_path / "run"), str(tmp_path / "q.mp4")
    assert main(["learn", "small_cnn", "--data", str(tmp_path / "coll"), "--run-dir", run, "--no-progress",
                 "--memory", "50"]) == 0
    with Corrections.open(run, write=False) as eng:
        before = eng.head_weight.clone()
    capsys.readouterr()
    assert main(["correct", run, video, "--shot", "1", "--label", "Sandal"]) == 0  # a new class, too
    out = capsys.readouterr().out
    assert "shot 1" in out and "now predicted Sandal" in out
    with Corrections.open(run, write=False) as eng:
        (c,) = eng.list()
        assert c.external_id.endswith("#shot1") and c.label == "Sandal" and "Sandal" in eng.classes
    assert main(["correct", run, video, "--at", "99s", "--label", "Sandal"]) == 2
    assert main(["correct", run, video, "--label", "Sandal"]) == 2  # which shot?
    assert main(["undo", run, str(c.id)]) == 0
    with Corrections.open(run, write=False) as eng:
        after = eng.head_weight[:, : before.shape[1]]
        assert float((after - before).abs().max()) <= 1e-6 * max(1.0, float(before.abs().max()))


def test_report_shows_held_out_clips_and_named_videos_as_keyframe_strips(tmp_path):
    """`evo report` on a run learnt from videos: a keyframe strip per held-out clip (never a trained one)
    and per `--video`, each shot captioned with the latest model's label."""
    pytest.importorskip("matplotlib")
    from PIL import Image

    from evo.analysis import test_videos
    from evo.data.video import load_videos

    coll = tmp_path / "coll"
    collection(coll, n_classes=3, clips_per_class=3, shots_per_clip=2, size=32)
    truth = shot_video(tmp_path / "q.mp4", 3, seed=4, size=32)
    run = str(tmp_path / "run")
    assert main(["learn", "small_cnn", "--data", str(coll), "--run-dir", run, "--no-progress", "--memory", "50"]) == 0
    held, how = test_videos(run, limit=5)
    _, test = load_videos(coll, frames=1, detector=None)
    assert set(held["path"]) == {c.path for i, c in enumerate(test.clips) if i in set(test.clip.tolist())}
    assert len(held) == 3 and set(held["truth"]) == {"T-shirt-top", "Trouser", "Pullover"} and "held-out" in how
    assert main(["report", run, "--video", str(tmp_path / "q.mp4"), "--videos", "2"]) == 0
    page = (Path(run) / "report" / "index.html").read_text()
    import re

    assert re.findall(r"<h2 id=\"s\d+\">Video shots: ([^<]+)</h2>", page) == ["q.mp4", "clip2.mp4", "clip1.mp4"]
    with Image.open(Path(run) / "report" / "video_0.png") as strip:  # the named video first: one tile per shot
        assert strip.size == (96 * len(truth), 96 + 28)
    assert "true class" in page and "video strips: 3 video(s)" in (Path(run) / "report" / "summary.md").read_text()
    assert main(["report", run, "--video", str(tmp_path / "missing.mp4")]) == 2
    assert main(["report", run, "--no-predict", "--video", str(tmp_path / "q.mp4")]) == 2
