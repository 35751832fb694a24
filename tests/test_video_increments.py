"""Video increments go through the same scenarios, Learner and search-space plumbing as images."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("av")

from videogen import collection  # noqa: E402

import evo  # noqa: E402
from evo.data import class_incremental  # noqa: E402
from evo.data.video import clip_scores, load_videos  # noqa: E402
from evo.search.scenario import stream_for, validation_split  # noqa: E402

OPTS = {"frames": 4, "detector": None, "size": 32}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("inc")
    collection(root, n_classes=4, clips_per_class=4, shots_per_clip=1, size=32)
    return root


def test_class_incremental_stream_over_a_video_folder(root):
    stream = class_incremental(root, increments=2, seed=0, source_opts=OPTS)
    assert len(stream.classes) == 4
    inc = stream[1]
    assert inc.train.groups is not None and len(inc.new_classes) == 2
    assert not set(inc.train.groups.tolist()) & set(inc.test.groups.tolist())  # no clip on both sides
    # the search builds the same stream from a space naming the folder, and validates by clip
    space = {"kind": "class_incremental", "source": str(root), "increments": 2, "seed": 0, "source_opts": OPTS}
    same = stream_for(space)
    assert same.classes == stream.classes and len(same[1].train) == len(inc.train)
    fit, val = validation_split(same, 1, per_class=4)
    assert len(val) and not set(fit.train.groups.tolist()) & set(val.groups.tolist())


def test_learner_learns_video_increments_and_scores_clips(root):
    stream = class_incremental(root, increments=2, seed=0, source_opts=OPTS)
    learner = evo.Learner(evo.zoo.load("small_cnn"), memory=40, progress=False)
    reports = [learner.learn(inc) for inc in stream]
    assert reports[-1].n_classes == 4 and reports[-1].accuracy is not None
    _, test = load_videos(root, **OPTS)
    scores = clip_scores(test, learner.predict_proba(test.data.images), learner.classes_)
    assert scores["clips"] == len(np.unique(test.clip)) and scores["frames"] == len(test)
    assert 0 <= scores["clip_accuracy"] <= 1 and 0 <= scores["frame_accuracy"] <= 1


def test_data_incremental_brings_new_clips_of_known_classes(root):
    from evo.data import data_incremental

    stream = data_incremental(root, increments=2, seed=0, source_opts=OPTS)
    a, b = stream[0].train, stream[1].train
    assert a.present_classes() == b.present_classes() == stream.classes
    assert not set(a.groups.tolist()) & set(b.groups.tolist())  # each clip arrives once, whole
    assert all((a.groups == g).sum() == 4 for g in np.unique(a.groups))
