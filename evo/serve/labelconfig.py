"""Label Studio labeling configs: which <Choices> name the classes of which <Image>, and which task key holds it."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from evo.serve.errors import BadRequest


@dataclass(frozen=True)
class ImageChoices:
    """The one image-classification control evo answers for.

    `from_name`/`to_name` go into every prediction's result; `data_key` is the task data field
    holding the image URL (`value="$image"` → "image"); `single` is False for choice="multiple".
    """

    from_name: str
    to_name: str
    data_key: str
    choices: tuple[str, ...]
    single: bool = True


def parse_label_config(xml: object) -> ImageChoices:
    """The first <Choices> whose toName is an <Image>; a config without one is refused with the reason."""
    if not isinstance(xml, str) or not xml.strip():
        raise BadRequest("the labeling config (schema / label_config) is missing; "
                         "connect the model from a project that has an image-classification config")
    if "<!DOCTYPE" in xml or "<!ENTITY" in xml:
        raise BadRequest("the labeling config must not contain a DOCTYPE or entities")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise BadRequest(f"the labeling config is not valid XML ({e})") from None
    images = {el.get("name"): el.get("value", "") for el in root.iter() if el.tag == "Image" and el.get("name")}
    if not images:
        raise BadRequest("the labeling config has no <Image> tag; evo classifies images "
                         '(e.g. <Image name="image" value="$image"/>)')
    for el in root.iter():
        if el.tag != "Choices" or el.get("toName") not in images:
            continue
        to_name, value = el.get("toName"), images[el.get("toName")]
        if not value.startswith("$") or len(value) < 2:
            raise BadRequest(f'<Image name="{to_name}"> needs value="$field" naming the task field with the image URL')
        names = tuple(c.get("alias") or c.get("value") for c in el.iter("Choice") if c.get("alias") or c.get("value"))
        if not names:
            raise BadRequest(f'<Choices name="{el.get("name")}"> has no <Choice value="..."/>; '
                             "add at least one class to the labeling config")
        return ImageChoices(el.get("name") or "choice", to_name, value[1:], names,
                            single=el.get("choice", "single") != "multiple")
    raise BadRequest(f"the labeling config has no <Choices toName=...> for its image(s) {sorted(images)}; "
                     'add e.g. <Choices name="label" toName="image"><Choice value="cat"/></Choices>')
