"""Label Studio's ML backend payloads, read defensively: every field is checked, every refusal names it.

Shapes follow label-studio 1.23 (`ml/api_connector.py`, `webhooks/models.py`):
  /setup    {"project": "<id>.<created ts>", "schema": <label config>, "hostname", "access_token", "extra_params"}
  /predict  {"tasks": [{"id", "data": {...}}], "project": "<id>.<ts>", "label_config", "params"}
  /webhook  {"action", "project": {"id", ...}, "annotation": {...}, "task": {...}}  (ANNOTATION_CREATED/UPDATED)
            {"action": "ANNOTATIONS_DELETED", "annotations": [{"id"}], "project": {...}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from evo.serve.errors import BadRequest
from evo.serve.labelconfig import ImageChoices

MAX_BODY_BYTES = 64 * 2**20


def parse_json(body: bytes, endpoint: str) -> dict[str, Any]:
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(f"{endpoint}: request body over {MAX_BODY_BYTES >> 20} MiB")
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"{endpoint}: request body is not valid JSON ({e})") from None
    except (RecursionError, ValueError):  # Python's parser recurses per level and refuses ints over 4300 digits
        raise BadRequest(f"{endpoint}: request body nests JSON too deeply or holds a number too long to read; "
                         "Label Studio's payloads do neither") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"{endpoint}: request body must be a JSON object; got {type(doc).__name__}")
    return doc


def is_id(value: Any) -> bool:
    """A Label Studio id: a JSON integer (not a boolean, which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def project_id(value: Any, endpoint: str) -> int:
    """Label Studio's project: "12.1700000000" (ML API), 12, or {"id": 12} (webhooks)."""
    if isinstance(value, dict):
        value = value.get("id")
    if is_id(value) and value >= 0:
        return value
    head = value.split(".")[0] if isinstance(value, str) else ""
    if head.isascii() and head.isdigit() and len(head) <= 18:  # an int64 id; int() refuses over 4300 digits
        return int(head)
    raise BadRequest(f"{endpoint}: 'project' must be Label Studio's project id (e.g. \"12.1700000000\" or "
                     f"{{\"id\": 12}}); got {value!r:.100}")


@dataclass(frozen=True)
class Task:
    id: int
    image_url: str


def parse_tasks(doc: dict[str, Any], config: ImageChoices) -> list[Task]:
    tasks = doc.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise BadRequest("/predict: 'tasks' must be a non-empty list of Label Studio tasks")
    return [parse_task(t, config, f"/predict: tasks[{i}]") for i, t in enumerate(tasks)]


def parse_task(task: Any, config: ImageChoices, where: str) -> Task:
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise BadRequest(f"{where} is not a Label Studio task: it needs an 'id' and a 'data' object")
    tid = task.get("id")
    if not is_id(tid):
        raise BadRequest(f"{where}: task 'id' must be an integer; got {tid!r}")
    url = task["data"].get(config.data_key)
    if not isinstance(url, str) or not url.strip():
        raise BadRequest(f"{where} (task {tid}) has no image: data.{config.data_key} is missing or empty "
                         f"(the labeling config reads the image from ${config.data_key})")
    return Task(tid, url)


@dataclass(frozen=True)
class Annotation:
    id: int
    label: str | None  # None: nothing for evo to learn (skipped, or no choice for evo's control)
    reason: str = ""


def parse_annotation(ann: Any, config: ImageChoices, where: str) -> Annotation:
    if not isinstance(ann, dict):
        raise BadRequest(f"{where}: 'annotation' must be an object")
    aid = ann.get("id")
    if not is_id(aid):
        raise BadRequest(f"{where}: annotation 'id' must be an integer; got {aid!r}")
    if ann.get("was_cancelled"):
        return Annotation(aid, None, "the annotation was skipped")
    result = ann.get("result")
    if not isinstance(result, list):
        raise BadRequest(f"{where}: annotation {aid} has no 'result' list")
    picked: list[str] = []
    for r in result:
        if not isinstance(r, dict) or r.get("from_name") != config.from_name:
            continue
        choices = (r.get("value") or {}).get("choices") if isinstance(r.get("value"), dict) else None
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise BadRequest(f"{where}: annotation {aid}: value.choices of '{config.from_name}' must be a list of "
                             "class names")
        picked += choices
    if not picked:
        return Annotation(aid, None, f"no choice for '{config.from_name}'")
    if len(picked) > 1:
        raise BadRequest(f"{where}: annotation {aid} picks {len(picked)} classes {picked} but "
                         f"<Choices name=\"{config.from_name}\"> allows one; evo learns one class per image")
    return Annotation(aid, picked[0])


def deleted_ids(doc: dict[str, Any]) -> list[int]:
    anns = doc.get("annotations")
    if not isinstance(anns, list):
        raise BadRequest("/webhook ANNOTATIONS_DELETED: 'annotations' must be a list of {\"id\": ...}")
    ids = [a.get("id") if isinstance(a, dict) else None for a in anns]
    if not all(is_id(i) for i in ids):
        raise BadRequest(f"/webhook ANNOTATIONS_DELETED: every annotation needs an integer 'id'; got {anns!r:.200}")
    return ids
