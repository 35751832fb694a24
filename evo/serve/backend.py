"""What the server does for each Label Studio call, without HTTP: connections, predictions, corrections.

One `Backend` wraps one corrections engine. Label Studio annotation ids map to corrections through the
engine's `external_id` ("labelstudio:<project>/<annotation>"), so the mapping lives in the engine's
durable log. `_update` serialises every change and every prediction: a prediction never sees a
replaced annotation half-way (undone but not yet re-corrected).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from evo.active.images import as_image, check_label, from_png, to_png
from evo.errors import EvoError
from evo.fsutil import temp_dir
from evo.runs import write_json_atomic
from evo.serve import protocol as P
from evo.serve.errors import BadRequest, NotConnected, SpoolError
from evo.serve.images import LabelStudioSource
from evo.serve.labelconfig import ImageChoices, parse_label_config

log = logging.getLogger("evo.serve")
CACHE_BYTES = 256 * 2**20  # decoded uploads kept: a task's image is fetched once for its annotation and predictions
FETCH_CHUNK = 8  # /predict decodes this many images at a time: memory bounded by the chunk, not the request
HANDLED = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")


@dataclass
class Connection:
    project: int
    config: ImageChoices
    source: LabelStudioSource | None


def external_id(project: int, annotation: int) -> str:
    return f"labelstudio:{project}/{annotation}"


class Backend:
    """The Label Studio ML backend over a corrections engine (`evo.active.Corrections` API).

    `source`: a Label Studio URL + key given to `evo serve`; it overrides what /setup sends.
    """

    def __init__(self, engine: Any, source: LabelStudioSource | None = None, fetch_workers: int = 8,
                 projects_file: Path | None = None, spool_parent: Path | None = None) -> None:
        self.engine, self.source, self.projects_file = engine, source, projects_file
        self.spool_parent = spool_parent  # where a bulk of annotations waits (None: the system's temp folder)
        self.connections: dict[int, Connection] = self._load_projects()
        self._update = threading.Lock()
        self._http = httpx.Client(follow_redirects=False)
        self._pool = ThreadPoolExecutor(fetch_workers, thread_name_prefix="evo-fetch")
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._cache_bytes, self._cache_lock = 0, threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._http.close()

    # ---- ML API ---------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return {"status": "UP", "model_class": "evo", "model_version": self.engine.model_version}

    def setup(self, doc: dict[str, Any]) -> dict[str, Any]:
        pid = P.project_id(doc.get("project"), "/setup")
        config = parse_label_config(doc.get("schema"))
        if not config.single:
            raise BadRequest(f'<Choices name="{config.from_name}" choice="multiple">: evo predicts one class per '
                             'image; use choice="single"')
        source = self.source
        if source is None and doc.get("hostname"):
            token = doc.get("access_token")
            source = LabelStudioSource(str(doc["hostname"]), token if isinstance(token, str) and token else None)
        self.connections[pid] = Connection(pid, config, source)
        self._save_projects(pid, doc)
        return {"model_version": self.engine.model_version}

    def _save_projects(self, pid: int, doc: dict[str, Any]) -> None:
        """Connected projects survive a restart (config and hostname only: the token stays in memory)."""
        if self.projects_file is None:
            return
        saved = self._read_projects()
        saved[str(pid)] = {"schema": doc.get("schema"), "hostname": doc.get("hostname")}
        write_json_atomic(self.projects_file, saved)

    def _read_projects(self) -> dict[str, Any]:
        try:
            saved = json.loads(self.projects_file.read_text()) if self.projects_file.is_file() else {}
        except (OSError, json.JSONDecodeError) as e:
            log.warning("ignoring %s (%s); projects reconnect on Label Studio's next /setup", self.projects_file, e)
            return {}
        return saved if isinstance(saved, dict) else {}

    def _load_projects(self) -> dict[int, Connection]:
        out: dict[int, Connection] = {}
        for key, doc in (self._read_projects() if self.projects_file else {}).items():
            try:
                host = doc.get("hostname")
                out[int(key)] = Connection(int(key), parse_label_config(doc.get("schema")),
                                           self.source or (LabelStudioSource(host) if host else None))
            except (EvoError, ValueError, AttributeError) as e:
                log.warning("project %s in %s not restored: %s", key, self.projects_file, e)
        return out

    def connection(self, pid: int, endpoint: str) -> Connection:
        conn = self.connections.get(pid)
        if conn is None:
            raise NotConnected(f"{endpoint}: project {pid} is not connected to this evo backend; add the backend in "
                               "the project's Settings > Model (Label Studio then calls /setup)")
        return conn

    def predict(self, doc: dict[str, Any]) -> dict[str, Any]:
        pid = P.project_id(doc.get("project"), "/predict")
        conn = self.connection(pid, "/predict")
        if doc.get("label_config"):
            config = parse_label_config(doc["label_config"])  # the project's config may have changed
            conn = Connection(pid, config, conn.source)
        tasks = P.parse_tasks(doc, conn.config)
        fetching = 0.0

        def fetched() -> Iterator[np.ndarray]:  # a chunk's decoded images at a time, each let go once read
            nonlocal fetching
            for i in range(0, len(tasks), FETCH_CHUNK):
                t0 = time.perf_counter()
                chunk = self._fetch_all(conn, [t.image_url for t in tasks[i:i + FETCH_CHUNK]])
                fetching += time.perf_counter() - t0
                while chunk:
                    yield chunk.pop(0)

        t0 = time.perf_counter()
        feats = self.engine.features(fetched())  # forward passes in full batches, across the chunks
        with self._update:  # the features do not change with corrections; the head is read once, here
            preds, version = self.engine.predict_features(feats), self.engine.model_version
        log.info("predict project %d: %d task(s), fetch %.3fs, predict %.3fs (%s)", pid, len(tasks), fetching,
                 time.perf_counter() - t0 - fetching, version)
        return {"results": [self._result(conn.config, p, version) for p in preds], "model_version": version}

    @staticmethod
    def _result(config: ImageChoices, pred: Any, version: str) -> dict[str, Any]:
        return {"result": [{"from_name": config.from_name, "to_name": config.to_name, "type": "choices",
                            "value": {"choices": [pred.label]}, "score": float(pred.probability)}],
                "score": float(pred.probability), "model_version": version,
                "top": [[name, float(p)] for name, p in pred.top]}

    def _fetch_all(self, conn: Connection, urls: list[str]) -> list[np.ndarray]:
        source = conn.source
        if source is None:
            need = [u for u in urls if not u.startswith(("data:", "http://", "https://"))]
            if need:
                raise NotConnected(f"image {need[0]!r} is a Label Studio path but no Label Studio hostname is known; "
                                   "set HOST in Label Studio or pass --ls-url/--ls-key to evo serve")
            source = LabelStudioSource("http://invalid.localhost")  # only absolute URLs, no credentials
        def fetch(url: str) -> np.ndarray:
            # Label Studio's uploads are immutable (uuid-named), so they are cached; other URLs may change
            key = (source.hostname, url) if url.startswith("/data/upload/") else None
            if key is not None:
                with self._cache_lock:
                    if key in self._cache:
                        self._cache.move_to_end(key)
                        return self._cache[key]
            image = source.fetch(self._http, url)
            if key is not None:
                with self._cache_lock:
                    self._cache[key] = image
                    self._cache_bytes += image.nbytes
                    while self._cache_bytes > CACHE_BYTES and self._cache:
                        self._cache_bytes -= self._cache.popitem(last=False)[1].nbytes
            return image

        return list(self._pool.map(fetch, urls)) if len(urls) > 1 else [fetch(urls[0])]

    def versions(self) -> dict[str, Any]:
        return {"versions": [self.engine.model_version]}

    def train(self) -> dict[str, Any]:
        return {"status": "ok", "model_version": self.engine.model_version,
                "message": "evo learns from each annotation as it arrives (webhook); there is nothing to train"}

    # ---- webhook --------------------------------------------------------------------------------
    def webhook(self, doc: dict[str, Any]) -> dict[str, Any]:
        action = doc.get("action")
        if not isinstance(action, str) or not action:
            raise BadRequest("/webhook: 'action' (e.g. ANNOTATION_CREATED) is missing")
        if action not in HANDLED:
            return {"status": "ignored", "action": action}
        pid = P.project_id(doc.get("project"), f"/webhook {action}")
        conn = self.connection(pid, f"/webhook {action}")
        if action == "ANNOTATIONS_DELETED":
            return self._deleted(pid, P.deleted_ids(doc))
        anns, tasks = doc.get("annotation"), doc.get("task")
        if action == "ANNOTATIONS_CREATED":
            if not isinstance(anns, list) or not isinstance(tasks, list):
                raise BadRequest("/webhook ANNOTATIONS_CREATED: 'annotation' and 'task' must be lists")
            if not (all(isinstance(t, dict) and P.is_id(t.get("id")) for t in tasks)
                    and all(P.is_id(a.get("task")) for a in anns if isinstance(a, dict))):
                raise BadRequest("/webhook ANNOTATIONS_CREATED: every task needs an integer 'id' and every "
                                 "annotation an integer 'task' (the id of its task in 'task')")
            by_id = {t["id"]: t for t in tasks}
            pairs = [(a, by_id.get(a["task"]) if isinstance(a, dict) else None) for a in anns]
        else:
            pairs = [(anns, tasks)]
        return self._annotated(action, conn, pairs)

    def _annotated(self, action: str, conn: Connection, pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
        """Every image and label is fetched and checked, and its features computed, before the model
        changes, so one bad image refuses the whole request. A bulk (more than `FETCH_CHUNK` annotations,
        e.g. an import of annotated tasks) is fetched a chunk at a time and its checked images spooled as
        PNG to a temporary folder (in the run folder, with evo's temporary prefix: the log keeps the same
        PNG of each anyway), then applied from there a chunk at a time, under the update lock: memory holds
        a chunk, a network failure cannot leave the bulk half applied, and predictions meanwhile see whole
        annotations, never half of one. The lock covers no forward pass: the network never changes."""
        where = f"/webhook {action}"
        parsed = [P.parse_annotation(a, conn.config, where) for a, _ in pairs]
        todo = [(ann, P.parse_task(t, conn.config, f"{where}: task of annotation {ann.id}"))
                for ann, (_, t) in zip(parsed, pairs, strict=True) if ann.label is not None]
        chunks = [todo[i:i + FETCH_CHUNK] for i in range(0, len(todo), FETCH_CHUNK)]
        feats: list[Any] = []  # each chunk's features (n, d)
        with contextlib.ExitStack() as stack:
            spool = self._spool_dir(stack) if len(chunks) > 1 else None
            t0 = time.perf_counter()
            images: list[np.ndarray] = []
            for k, chunk in enumerate(chunks):  # the engine's own checks on every image and label, before any change
                images = [as_image(im) for im in self._fetch_all(conn, [t.image_url for _, t in chunk])]
                for ann, _ in chunk:
                    check_label(ann.label)
                feats.append(self.engine.features(images))
                if spool is not None:
                    _spool(spool, k, images)
                    images = []
            t1 = time.perf_counter()
            done: list[dict[str, Any]] = []
            with self._update:
                for ann in parsed:
                    if ann.label is None and (cid := self.engine.find(external_id(conn.project, ann.id))) is not None:
                        self.engine.undo(cid)
                        done.append({"annotation": ann.id, "undone": cid, "reason": ann.reason})
                version = self.engine.model_version
            for k, chunk in enumerate(chunks):
                pngs: list[bytes | None] = [None] * len(chunk)
                if spool is not None:
                    pngs = _unspool(spool, k, len(chunk))
                    images = [from_png(b) for b in pngs]
                with self._update:  # validated and fetched: change the model, one reference swap each
                    for (ann, _), image, x, png in zip(chunk, images, feats[k], pngs, strict=True):
                        ext = external_id(conn.project, ann.id)
                        old = self.engine.find(ext)
                        if old is not None:  # replaced: its weight must not prop up the new label's
                            self.engine.undo(old)
                        r = self.engine.correct(image, ann.label, source="labelstudio", external_id=ext, features=x,
                                                png=png)  # the spooled PNG is the log's copy: encoded once
                        done.append({"annotation": ann.id, "correction": r.id, "label": r.label,
                                     "previous": r.previous, "replaced": old, "holds": r.holds, "seconds": r.seconds})
                    version = self.engine.model_version
        for d in done:
            log.info("%s project %d annotation %d: %s (fetch %.3fs, update %.3fs, %s)", action, conn.project,
                     d["annotation"], f"{d.get('previous')} -> {d['label']}" if "label" in d else "undone",
                     t1 - t0, time.perf_counter() - t1, version)
        return {"status": "ok", "action": action, "corrections": done, "model_version": version,
                "ignored": [{"annotation": a.id, "reason": a.reason} for a in parsed if a.label is None]}

    def _spool_dir(self, stack: contextlib.ExitStack) -> Path:
        """A temporary folder for a bulk's checked images, removed when `stack` closes (or, after a kill,
        by the run's next writer: it carries evo's temporary prefix)."""
        try:
            path = temp_dir(self.spool_parent, "bulk") if self.spool_parent else Path(tempfile.mkdtemp(prefix="evo-bulk-"))
        except OSError as e:
            raise _spool_error(self.spool_parent or tempfile.gettempdir(), e) from None
        stack.callback(shutil.rmtree, path, True)
        return path

    def _deleted(self, pid: int, ids: list[int]) -> dict[str, Any]:
        undone = []
        with self._update:
            for aid in ids:
                cid = self.engine.find(external_id(pid, aid))
                if cid is not None:
                    self.engine.undo(cid)
                    undone.append({"annotation": aid, "undone": cid})
            version = self.engine.model_version
        log.info("ANNOTATIONS_DELETED project %d: %s undone (%s)", pid, [u["annotation"] for u in undone], version)
        return {"status": "ok", "action": "ANNOTATIONS_DELETED", "undone": undone, "model_version": version}


def _spool_error(where: str | Path, e: OSError) -> SpoolError:
    return SpoolError(f"the bulk of annotations could not be spooled to {where} ({e.strerror or e}); nothing was "
                      "applied: free space there and send it again")


def _spool(folder: Path, chunk: int, images: list[np.ndarray]) -> None:
    """Checked images of a bulk, kept on disk until applied (PNG: lossless, no pickle)."""
    try:
        for j, image in enumerate(images):
            (folder / f"{chunk}-{j}.png").write_bytes(to_png(image))
    except OSError as e:
        raise _spool_error(folder, e) from None


def _unspool(folder: Path, chunk: int, n: int) -> list[bytes]:
    return [(folder / f"{chunk}-{j}.png").read_bytes() for j in range(n)]
