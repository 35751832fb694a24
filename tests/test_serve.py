"""evo serve: the Label Studio ML backend app on a real small run, through HTTP (Starlette's TestClient)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from active_helpers import LiveImages
from fastapi.testclient import TestClient
from PIL import Image
from serve_run import KNOWN, fashion, make_run

from evo.serve import create_app, open_backend

CONFIG = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image" choice="single">'
          + "".join(f'<Choice value="{c}"/>' for c in fashion().classes) + "</Choices></View>")
KEY = "ls-legacy-key-123"


def png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(img: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png(img)).decode()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("serve") / "run")


@pytest.fixture(scope="module")
def ls_files():
    """A real HTTP server standing in for Label Studio's /data/upload/: needs 'Authorization: Token KEY'."""
    test = fashion()
    files = {f"/data/upload/1/{i}.png": png(test.images[i]) for i in range(40)}

    class H(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.headers.get("Authorization") != f"Token {KEY}":
                self.send_response(401), self.end_headers()
            elif self.path in files:
                self.send_response(200), self.send_header("Content-Type", "image/png"), self.end_headers()
                self.wfile.write(files[self.path])
            else:
                self.send_response(404), self.end_headers()

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


@pytest.fixture
def served(run_dir, ls_files):
    backend = open_backend(run_dir)
    with TestClient(create_app(backend), raise_server_exceptions=False) as client:
        r = client.post("/setup", json={"project": "1.1700000000", "schema": CONFIG, "hostname": ls_files,
                                        "access_token": KEY})
        assert r.status_code == 200, r.text
        yield client, backend.engine
    backend.close()
    backend.engine.close()


def task(i: int) -> dict:
    return {"id": 100 + i, "data": {"image": f"/data/upload/1/{i}.png"}, "project": 1}


def annotation(aid: int, i: int, *labels: str, cancelled: bool = False) -> dict:
    return {"id": aid, "task": 100 + i, "was_cancelled": cancelled,
            "result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": list(labels)}}]}


def hook(client, action: str, aid: int, i: int, *labels: str, project: int = 1):
    return client.post("/webhook", json={"action": action, "project": {"id": project, "title": "t"},
                                         "annotation": annotation(aid, i, *labels), "task": task(i)})


def predict(client, *idx: int) -> list[dict]:
    r = client.post("/predict", json={"tasks": [task(i) for i in idx], "project": "1.1700000000",
                                      "label_config": CONFIG, "params": {}})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def label_of(res: dict) -> str:
    return res["result"][0]["value"]["choices"][0]


def test_health_setup_predict_in_one_batch(served):
    client, eng = served
    assert client.get("/health").json()["status"] == "UP"
    res = predict(client, *range(12))
    assert len(res) == 12
    want = eng.predict(fashion().images[:12])
    assert [label_of(r) for r in res] == [p.label for p in want]
    for r, p in zip(res, want, strict=True):
        assert r["result"][0]["from_name"] == "label" and r["result"][0]["to_name"] == "image"
        assert r["score"] == pytest.approx(p.probability) and r["model_version"] == eng.model_version
    assert client.get("/versions").json() == {"versions": [eng.model_version]}
    assert client.post("/train", json={}).status_code == 200
    uri = {"id": 7, "data": {"image": data_uri(fashion().images[3])}}
    r = client.post("/predict", json={"tasks": [uri], "project": "1.1"})
    assert label_of(r.json()["results"][0]) == want[3].label


def test_annotation_created_updated_deleted(served):
    client, eng = served
    test = fashion()
    i = next(i for i in range(40) if predict(client, i)[0]["result"][0]["value"]["choices"][0] != test.classes[test.labels[i]])
    truth, before = test.classes[test.labels[i]], eng.model_version
    r = hook(client, "ANNOTATION_CREATED", 501, i, truth)
    assert r.status_code == 200, r.text
    assert r.json()["corrections"][0]["label"] == truth and eng.model_version != before
    assert label_of(predict(client, i)[0]) == truth
    assert predict(client, i)[0]["model_version"] == eng.model_version
    cid = eng.find("labelstudio:1/501")
    assert cid is not None
    other = next(c for c in test.classes[:KNOWN] if c != truth)
    r = hook(client, "ANNOTATION_UPDATED", 501, i, other)
    assert r.status_code == 200, r.text
    live = [c for c in eng.list() if not c.undone and c.external_id == "labelstudio:1/501"]
    assert len(live) == 1 and live[0].label == other and eng.find("labelstudio:1/501") != cid
    assert label_of(predict(client, i)[0]) == other
    r = client.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "project": {"id": 1},
                                      "annotations": [{"id": 501}, {"id": 99999}]})
    assert r.status_code == 200 and [u["annotation"] for u in r.json()["undone"]] == [501]
    assert eng.find("labelstudio:1/501") is None
    assert all(c.undone for c in eng.list() if c.external_id == "labelstudio:1/501")


def test_a_new_class_label_adds_the_class(served):
    client, eng = served
    new = fashion().classes[KNOWN]
    assert new not in eng.classes
    r = hook(client, "ANNOTATION_CREATED", 601, 5, new)
    assert r.status_code == 200, r.text
    assert new in eng.classes and label_of(predict(client, 5)[0]) == new


def test_skipped_and_other_actions_are_quiet(served):
    client, eng = served
    n = len(eng.list())
    r = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 1}, "task": task(1),
                                      "annotation": annotation(701, 1, "Trouser", cancelled=True)})
    assert r.status_code == 200 and r.json()["ignored"][0]["annotation"] == 701
    for action in ("PROJECT_UPDATED", "TASKS_CREATED", "START_TRAINING"):
        r = client.post("/webhook", json={"action": action, "project": {"id": 1}})
        assert r.status_code == 200 and r.json()["status"] == "ignored"
    assert len(eng.list()) == n


def _unchanged(eng):
    return eng.model_version, [(c.id, c.undone, c.label) for c in eng.list()], list(eng.classes)


@pytest.mark.parametrize("case", ["malformed json", "not an object", "no tasks", "task without image",
                                  "task not a task", "unfetchable image", "two choices", "unknown project",
                                  "no choices in config", "no image in config", "update with bad image",
                                  "annotation without result", "missing action", "5000-digit project",
                                  "deeply nested body", "5000-digit number", "list ids"])
def test_bad_input_is_refused_clearly_and_changes_nothing(served, case):
    client, eng = served
    hook(client, "ANNOTATION_CREATED", 801, 2, "Coat")
    state = _unchanged(eng)
    no_choices = CONFIG.split("<Choices")[0] + '<Choices name="label" toName="image"></Choices></View>'
    post = {
        "malformed json": ("/predict", b'{"tasks": [', None),
        "not an object": ("/webhook", b"[1, 2]", None),
        "no tasks": ("/predict", None, {"tasks": [], "project": "1.1"}),
        "task without image": ("/predict", None, {"tasks": [{"id": 3, "data": {"text": "x"}}], "project": "1.1"}),
        "task not a task": ("/predict", None, {"tasks": ["/data/upload/1/1.png"], "project": "1.1"}),
        "unfetchable image": ("/predict", None, {"tasks": [{"id": 3, "data": {"image": "/data/upload/1/nope.png"}}],
                                                 "project": "1.1"}),
        "two choices": ("/webhook", None, {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "task": task(4),
                                           "annotation": annotation(802, 4, "Coat", "Dress")}),
        "unknown project": ("/webhook", None, {"action": "ANNOTATION_CREATED", "project": {"id": 77}, "task": task(4),
                                               "annotation": annotation(803, 4, "Coat")}),
        "no choices in config": ("/setup", None, {"project": "1.1", "schema": no_choices}),
        "no image in config": ("/setup", None, {"project": "1.1", "schema": "<View><Text name='t' value='$t'/></View>"}),
        "update with bad image": ("/webhook", None, {"action": "ANNOTATION_UPDATED", "project": {"id": 1},
                                                     "annotation": annotation(801, 2, "Dress"),
                                                     "task": {"id": 102, "data": {"image": "/data/upload/1/x.png"}}}),
        "annotation without result": ("/webhook", None, {"action": "ANNOTATION_CREATED", "project": {"id": 1},
                                                         "task": task(4), "annotation": {"id": 804}}),
        "missing action": ("/webhook", None, {"project": {"id": 1}}),
        "5000-digit project": ("/setup", None, {"project": "9" * 5000, "schema": CONFIG}),
        "deeply nested body": ("/setup", b'{"project": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None),
        "5000-digit number": ("/setup", b'{"project": ' + b"9" * 5000 + b"}", None),
        "list ids": ("/webhook", None, {"action": "ANNOTATIONS_CREATED", "project": {"id": 1},
                                        "annotation": [{"id": 805, "task": [4], "result": []}],
                                        "task": [{"id": [4], "data": {"image": "/data/upload/1/4.png"}}]}),
    }[case]
    path, raw, doc = post
    r = client.post(path, content=raw, headers={"content-type": "application/json"}) if raw is not None \
        else client.post(path, json=doc)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    msg = r.json()["error"]
    assert msg and "Traceback" not in msg and len(msg.splitlines()) == 1
    expect = {"malformed json": "not valid JSON", "task without image": "has no image",
              "unfetchable image": "HTTP 404", "two choices": "allows one", "unknown project": "not connected",
              "no choices in config": "no <Choice", "no image in config": "no <Image",
              "5000-digit project": "'project' must be", "deeply nested body": "too deeply", "5000-digit number": "too long",
              "list ids": "integer 'task'"}.get(case)
    if expect:
        assert expect in msg, msg
    assert _unchanged(eng) == state
    assert label_of(predict(client, 2)[0]) == "Coat"  # project 1 still connected, correction 801 still live


def test_token_is_required_when_set(run_dir):
    backend = open_backend(run_dir)
    try:
        with TestClient(create_app(backend, token="s3cret")) as client:
            assert client.get("/health").status_code == 401
            assert "token" in client.post("/setup", json={}).json()["error"]
            assert client.get("/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert client.get("/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
            assert client.get("/health", auth=("labelstudio", "s3cret")).status_code == 200  # LS's Basic auth
            before = backend.engine.model_version
            r = client.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "project": {"id": 1},
                                              "annotations": [{"id": 1}]})
            assert r.status_code == 401 and backend.engine.model_version == before
    finally:
        backend.close()
        backend.engine.close()


def test_predictions_during_updates_see_whole_versions(served):
    """Predictions racing an ANNOTATION_UPDATED (correct + undo) only ever see versions a webhook reported."""
    client, eng = served
    seen, stop = [], threading.Event()

    def hammer():
        while not stop.is_set():
            seen.extend(r["model_version"] for r in predict(client, 9, 10))

    reported = {eng.model_version}
    t = threading.Thread(target=hammer)
    t.start()
    try:
        for k, lab in enumerate(["Coat", "Dress", "Shirt", "Coat", "Trouser", "Dress"]):
            r = hook(client, "ANNOTATION_CREATED" if k == 0 else "ANNOTATION_UPDATED", 901, 9, lab)
            reported.add(r.json()["model_version"])
    finally:
        stop.set()
        t.join()
    assert seen and set(seen) <= reported, set(seen) - reported
    assert json.dumps(seen)  # plain strings


def test_server_corrections_are_in_the_runs_durable_log(run_dir, ls_files):
    from evo.active import Corrections

    backend = open_backend(run_dir)
    with TestClient(create_app(backend)) as client:
        client.post("/setup", json={"project": "3.1", "schema": CONFIG, "hostname": ls_files, "access_token": KEY})
        r = hook(client, "ANNOTATION_CREATED", 1001, 11, "Sneaker", project=3)
        assert r.status_code == 200, r.text
        version = r.json()["model_version"]
    backend.close()
    backend.engine.close()  # releases the run's writer lock
    with Corrections.open(run_dir) as eng:  # what `evo correct` opens
        rec = [c for c in eng.list() if c.external_id == "labelstudio:3/1001"]
        assert len(rec) == 1 and rec[0].label == "Sneaker" and rec[0].source == "labelstudio"
        assert eng.model_version == version


def test_cli_serve_refuses_a_missing_run_and_a_busy_one(tmp_path, run_dir, capsys):
    from evo.cli import main

    assert main(["serve", str(tmp_path / "nope"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and len(err.strip().splitlines()) == 1
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["serve", str(run_dir), "--port", str(busy.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert "cannot listen on 127.0.0.1" in err and len(err.strip().splitlines()) == 1
    import subprocess
    import sys

    holder = subprocess.Popen(  # another process (e.g. `evo correct`) holds the run's writer lock
        [sys.executable, "-c", "import sys, time; from evo.active import Corrections\n"
         "with Corrections.open(sys.argv[1]):\n print('held', flush=True); time.sleep(120)", str(run_dir)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["serve", str(run_dir), "--port", "0"]) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert "evo serve: error:" in err and len(err.strip().splitlines()) == 1


def test_annotations_created_in_bulk(served):
    client, eng = served
    anns = [annotation(1101, 20, "Sandal"), annotation(1102, 21, "Shirt")]
    r = client.post("/webhook", json={"action": "ANNOTATIONS_CREATED", "project": {"id": 1},
                                      "annotation": anns, "task": [task(20), task(21)]})
    assert r.status_code == 200, r.text
    assert [c["label"] for c in r.json()["corrections"]] == ["Sandal", "Shirt"]
    assert eng.find("labelstudio:1/1101") is not None and eng.find("labelstudio:1/1102") is not None
    assert [label_of(x) for x in predict(client, 20, 21)] == ["Sandal", "Shirt"]


def test_connected_projects_survive_a_restart_without_their_token(run_dir, ls_files):
    def client_for(backend):
        return TestClient(create_app(backend), raise_server_exceptions=False)

    backend = open_backend(run_dir)
    with client_for(backend) as client:
        assert client.post("/setup", json={"project": "5.1", "schema": CONFIG, "hostname": ls_files,
                                           "access_token": KEY}).status_code == 200
    backend.close(), backend.engine.close()
    assert KEY not in (run_dir / "labelstudio.json").read_text()  # the token never touches the disk
    backend = open_backend(run_dir)
    try:
        with client_for(backend) as client:
            img = {"id": 1, "data": {"image": data_uri(fashion().images[30])}}
            r = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 5}, "task": img,
                                              "annotation": annotation(1201, 30, "Pullover")})
            assert r.status_code == 200, r.text  # still connected
            r = hook(client, "ANNOTATION_CREATED", 1202, 31, "Pullover", project=5)
            assert r.status_code == 422 and "HTTP 401" in r.json()["error"]  # needs /setup's token again
            assert eng_find(backend, "labelstudio:5/1202") is None
    finally:
        backend.close(), backend.engine.close()


def eng_find(backend, ext):
    return backend.engine.find(ext)


KEYS = ["action", "project", "tasks", "data", "image", "annotation", "annotations", "task", "result", "from_name",
        "to_name", "value", "choices", "id", "schema", "hostname", "access_token", "was_cancelled", "label_config"]


def test_no_request_body_gets_a_500(served):
    """Fuzz: JSON built from the protocol's own keys, sent to every endpoint, never crashes the server."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    client, eng = served
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 200), st.sampled_from(
        ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "1.17", "label", "image", "Coat",
         "/data/upload/1/nope.png", "data:image/png;base64,AAAA", CONFIG, "<View/>", ""]))
    docs = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
                        max_leaves=12)

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(path=st.sampled_from(["/setup", "/predict", "/webhook", "/train"]), doc=docs)
    def check(path, doc):
        before = (len(eng.list()), eng.model_version)
        r = client.post(path, json=doc)
        assert r.status_code < 500, (path, doc, r.text)
        if r.status_code >= 400:
            assert r.json()["error"]
        if path != "/webhook" or r.status_code >= 400:
            assert (len(eng.list()), eng.model_version) == before

    check()


@contextlib.contextmanager
def uvicorn_serving(app):
    """`app` behind a real uvicorn server (the TestClient cannot show what uvicorn does to a connection)."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_an_unexpected_error_is_a_clean_500_over_real_http(run_dir, monkeypatch):
    """One JSON line, and the connection stays open (Starlette's catch-all handler re-raised to uvicorn
    after replying, and uvicorn then closed the connection: clients saw 'Connection reset by peer')."""
    import http.client

    backend = open_backend(run_dir)

    def broken(*_) -> dict:
        raise RuntimeError("a bug")

    monkeypatch.setattr(backend, "setup", broken)
    try:
        with uvicorn_serving(create_app(backend)) as url:
            conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
            for _ in range(2):  # the second request goes over the same connection
                conn.request("POST", "/setup", body=b'{"project": "1.1"}', headers={"content-type": "application/json"})
                r = conn.getresponse()
                assert r.status == 500 and r.getheader("content-type") == "application/json"
                assert json.loads(r.read()) == {"error": "/setup: internal error (RuntimeError); see the evo serve log"}
                time.sleep(0.2)  # time for a close to arrive
            conn.close()
    finally:
        backend.close(), backend.engine.close()


def _save(img: Image.Image, path, **opts):
    img.save(path, **opts)
    return path.read_bytes()


def test_the_server_decodes_images_as_evo_predict_does(tmp_path):
    """A correction from Label Studio learns the pixels `evo predict` sees: 16-bit grey is scaled, not
    saturated; transparency lies over white; EXIF rotation is applied."""
    from evo.active.images import as_image
    from evo.serve.images import decode_image

    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[..., 0], rgba[:, :32, 3] = 200, 255  # left half opaque red, right half transparent
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    files = {"grey16.png": _save(Image.fromarray(ramp), tmp_path / "grey16.png"),
             "rgba.png": _save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png"),
             "rotated.jpg": _save(Image.fromarray(rgba[..., :3]), tmp_path / "rotated.jpg", exif=exif)}
    for name, data in files.items():
        served, cli = decode_image(data, name), as_image(tmp_path / name)
        assert served.dtype == np.uint8 and np.array_equal(served, cli), name
    assert decode_image(files["grey16.png"], "g").max() == 255 and decode_image(files["grey16.png"], "g").min() == 0
    assert (decode_image(files["rgba.png"], "t")[:, 32:] == 255).all()
    assert decode_image(files["rotated.jpg"], "r").shape == (64, 48, 3)


def test_huge_images_are_refused_in_one_line_or_read_smaller(served, tmp_path, run_dir, capsys):
    """A 17 KB PNG claiming 12000x12000 pixels is refused before decoding (it took gigabytes), with no
    Pillow warning; a JPEG over the limit is read at a reduced scale instead."""
    import warnings

    from evo.cli import main
    from evo.data.sources._images import MAX_PIXELS
    from evo.serve.images import decode_image

    client, eng = served
    huge = tmp_path / "huge.png"
    Image.new("1", (12000, 12000)).save(huge)
    before = _unchanged(eng)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        uri = "data:image/png;base64," + base64.b64encode(huge.read_bytes()).decode()
        r = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": uri}}], "project": "1.1"})
        assert r.status_code == 422 and "12000x12000" in r.json()["error"] and "downscale" in r.json()["error"]
        r = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 1},
                                          "annotation": annotation(1301, 0, "Coat"), "task": {"id": 1, "data": {"image": uri}}})
        assert r.status_code == 422 and "12000x12000" in r.json()["error"]
        assert main(["predict", str(run_dir), str(huge)]) == 2
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "12000x12000" in err and "downscale" in err
    assert _unchanged(eng) == before
    big = tmp_path / "big.jpg"
    Image.new("L", (9000, 8000), 90).save(big)  # 72 MP
    small = decode_image(big.read_bytes(), "big.jpg")
    assert small.shape == (4000, 4500, 3) and small.shape[0] * small.shape[1] <= MAX_PIXELS


def test_a_large_predict_request_decodes_a_bounded_number_of_images(served, monkeypatch):
    """/predict decoded every task's image before predicting: 20 tasks of 67 MP took gigabytes. Now a
    chunk at a time is decoded and shrunk to features; the predictions are the same."""
    import evo.serve.images as served_images
    from evo.serve.backend import FETCH_CHUNK

    client, eng = served
    live = LiveImages(served_images.decode_image)
    monkeypatch.setattr(served_images, "decode_image", live)
    batches = []
    forward = eng._forward  # noqa: SLF001
    monkeypatch.setattr(eng, "_forward", lambda inputs: batches.append(len(inputs)) or forward(inputs))
    imgs = fashion().images[:3 * FETCH_CHUNK + 1]
    tasks = [{"id": i, "data": {"image": data_uri(im)}} for i, im in enumerate(imgs)]  # data URIs: never cached
    r = client.post("/predict", json={"tasks": tasks, "project": "1.1"})
    assert r.status_code == 200, r.text
    assert batches == [len(imgs)]  # the chunks feed one forward batch (the engine's size), not one each
    assert [label_of(x) for x in r.json()["results"]] == [p.label for p in eng.predict(imgs)]
    assert len(live.refs) == len(imgs) and live.most < FETCH_CHUNK


def test_a_bulk_of_annotations_is_checked_whole_and_decoded_a_chunk_at_a_time(served, run_dir, monkeypatch):
    """ANNOTATIONS_CREATED of an import decoded every task's image at once; now a chunk at a time, once:
    checked and spooled (PNG, in the run folder under evo's temporary prefix), then applied from there:
    a second fetch could fail half-way through and leave the bulk half applied. One bad image, or a
    spool that fails on a later chunk (disk full), still refuses the whole bulk before any change."""
    import evo.serve.backend as backend
    import evo.serve.images as served_images
    from evo.fsutil import TMP_PREFIX
    from evo.serve.backend import FETCH_CHUNK

    client, eng = served
    imgs = fashion().images[:2 * FETCH_CHUNK + 3]
    tasks = [{"id": 500 + i, "data": {"image": data_uri(im)}} for i, im in enumerate(imgs)]
    anns = [{**annotation(1500 + i, 0, "Bag"), "task": 500 + i} for i in range(len(imgs))]
    bad = [*tasks[:-1], {**tasks[-1], "data": {"image": "data:image/png;base64,bm90IGFuIGltYWdl"}}]
    before = _unchanged(eng)
    r = client.post("/webhook", json={"action": "ANNOTATIONS_CREATED", "project": {"id": 1}, "annotation": anns,
                                      "task": bad})
    assert r.status_code == 422 and _unchanged(eng) == before
    spooled, to_png = [], backend.to_png

    def disk_full(image):
        spooled.append(image)
        if len(spooled) > FETCH_CHUNK + 2:  # part-way through the second chunk
            raise OSError(28, "No space left on device")
        return to_png(image)

    monkeypatch.setattr(backend, "to_png", disk_full)
    r = client.post("/webhook", json={"action": "ANNOTATIONS_CREATED", "project": {"id": 1}, "annotation": anns,
                                      "task": tasks})
    assert r.status_code == 507 and "No space left" in r.json()["error"] and _unchanged(eng) == before
    assert not [p for p in run_dir.iterdir() if p.name.startswith(TMP_PREFIX)]  # the spool is gone
    monkeypatch.setattr(backend, "to_png", to_png)
    live = LiveImages(served_images.decode_image)
    monkeypatch.setattr(served_images, "decode_image", live)
    where, unspool = [], backend._unspool  # noqa: SLF001
    monkeypatch.setattr(backend, "_unspool", lambda folder, *a: where.append(folder) or unspool(folder, *a))
    r = client.post("/webhook", json={"action": "ANNOTATIONS_CREATED", "project": {"id": 1}, "annotation": anns,
                                      "task": tasks})
    assert r.status_code == 200, r.text
    assert [c["label"] for c in r.json()["corrections"]] == ["Bag"] * len(imgs)
    assert len(live.refs) == len(imgs) and live.most < FETCH_CHUNK  # fetched once, a chunk at a time
    assert len(where) == 3 and all(f.parent == run_dir and f.name.startswith(TMP_PREFIX) for f in where)
    assert not [p for p in run_dir.iterdir() if p.name.startswith(TMP_PREFIX)]  # the spool is gone
    assert all(eng.find(f"labelstudio:1/{1500 + i}") is not None for i in range(len(imgs)))
    r = client.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "project": {"id": 1},
                                      "annotations": [{"id": 1500 + i} for i in range(len(imgs))]})
    assert r.status_code == 200 and len(r.json()["undone"]) == len(imgs)


def test_the_engines_features_do_not_depend_on_the_cpu_batch(served, monkeypatch):
    """The engine's forward runs at the cache-sized CPU batch (evo.learn.device.feature_batch): one image
    at a time gives the features of one batch of all, to float rounding."""
    import evo.learn.device as dev

    _, eng = served
    imgs = fashion().images[:20]
    monkeypatch.setattr(dev, "CPU_CACHE_BYTES", 0)
    whole = eng.features(imgs)
    monkeypatch.setattr(dev, "CPU_CACHE_BYTES", 1)  # batch 1
    batches = []
    forward = eng._forward  # noqa: SLF001
    monkeypatch.setattr(eng, "_forward", lambda inputs: batches.append(len(inputs)) or forward(inputs))
    split = eng.features(imgs)
    assert batches == [1] * len(imgs)
    assert torch.allclose(split, whole, rtol=1e-5, atol=1e-5 * float(whole.abs().max()))
