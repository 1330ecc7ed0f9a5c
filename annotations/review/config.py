"""The Label Studio labeling config generated from a landmark scheme.

One ``<KeyPointLabels>`` control with one ``<Label>`` per landmark, in scheme order. The landmark's
index then travels in ``value.keypointlabels[0]`` of every result item and survives a human drag in
the real UI; ``model_index`` is what the SDK's COCO/YOLO keypoint converter reads, and
``maxUsages="1"`` stops a reviewer from placing the same landmark twice (docs/review.md section 3.1; tags:
https://labelstud.io/tags/keypointlabels, https://labelstud.io/tags/label). Labels are coloured by
the scheme's regions so that a 68-button palette stays readable. An optional single-choice
``face_status`` lets a reviewer reject a sample (bad image, no face) instead of correcting it.

Reviewer aids (docs/review.md): label values are the scheme's anatomical names ("nose tip"); the
task's ``doubts`` text names the landmarks the model is least sure of, with their scores (each
predicted point also shows its own score); a per-region choice ``visibility`` marks a selected point
*occluded* (its position is an estimate), and deleting a point marks it missing (NaN). Projects made
before the names existed use ``lm_00``... as labels; :func:`config_labels` reads either.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from xml.sax.saxutils import quoteattr

from pipnet_core.schemes import Scheme

__all__ = [
    "CHOICES_NAME",
    "CONTROL_NAME",
    "DOUBTS_NAME",
    "IMAGE_NAME",
    "OCCLUDED",
    "POINT_WIDTH",
    "REGION_COLOURS",
    "REJECT_CHOICES",
    "STATUS_CHOICES",
    "VISIBILITY_NAME",
    "config_labels",
    "labeling_config",
]

CONTROL_NAME = "kp"  # from_name of every landmark result item
IMAGE_NAME = "image"  # to_name, and the task data key holding the image URL ($image)
CHOICES_NAME = "face_status"
VISIBILITY_NAME = "visibility"  # per-region choice on a selected landmark
OCCLUDED = "occluded"
DOUBTS_NAME = "doubts"  # task data key (and Text object) naming the least confident landmarks
STATUS_OK = "ok"
REJECT_CHOICES = ("bad image", "no face")  # a reviewer's choice that rejects the sample
STATUS_CHOICES = (STATUS_OK, *REJECT_CHOICES)
# Point size in percent of the image width, as the UI writes it for KeyPointLabels (docs/review.md section 4).
POINT_WIDTH = 0.6

# One colour per region of pipnet_core.schemes.REGION_ORDER; saturated hues that differ in hue and
# lightness, so neighbouring regions (brows/eyes, nose/mouth) stay apart on skin and on grey images.
REGION_COLOURS = {
    "jaw": "#1f77b4",
    "brows": "#ff7f0e",
    "nose": "#2ca02c",
    "eyes": "#d62728",
    "mouth": "#9467bd",
    "other": "#7f7f7f",
}


def labeling_config(scheme: Scheme, reject_choices: bool = True, names: Sequence[str] | None = None) -> str:
    """The labeling config XML for reviewing ``scheme`` landmarks.

    Args:
        scheme: The store's landmark layout.
        reject_choices: Add the ``face_status`` choices (ok / bad image / no face).
        names: Label values, one per landmark in order (default ``scheme.landmark_names``).

    Returns:
        The XML text, accepted by ``POST /api/projects`` as ``label_config``.
    """
    regions = scheme.region_of()
    values = list(names or scheme.landmark_names)
    labels = "\n".join(
        f"    <Label value={quoteattr(name)} model_index={quoteattr(str(i))}"
        f" background={quoteattr(REGION_COLOURS.get(regions[i], REGION_COLOURS['other']))}"
        f' maxUsages="1" hint={quoteattr(f"{i}: {scheme.landmark_names[i]} ({regions[i]})")}/>'
        for i, name in enumerate(values)
    )
    how = (
        f"Move the {scheme.name} landmarks that are wrong. Select a point and tick '{OCCLUDED}' when it is hidden"
        " (place it where it would be); delete a point that cannot be placed at all."
    )
    parts = [
        "<View>",
        f"  <Header value={quoteattr(how)}/>",
        f'  <Text name="{DOUBTS_NAME}" value="${DOUBTS_NAME}"/>',
        f'  <Image name="{IMAGE_NAME}" value="${IMAGE_NAME}" zoom="true" zoomControl="true" rotateControl="false"/>',
        f'  <KeyPointLabels name="{CONTROL_NAME}" toName="{IMAGE_NAME}" strokeWidth="1">',
        labels,
        "  </KeyPointLabels>",
        f'  <Choices name="{VISIBILITY_NAME}" toName="{IMAGE_NAME}" perRegion="true" choice="multiple">',
        f"    <Choice value={quoteattr(OCCLUDED)}/>",
        "  </Choices>",
    ]
    if reject_choices:
        choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in STATUS_CHOICES)
        parts += [
            f'  <Choices name="{CHOICES_NAME}" toName="{IMAGE_NAME}" choice="single" showInline="true">',
            choices,
            "  </Choices>",
        ]
    parts.append("</View>")
    return "\n".join(parts) + "\n"


def config_labels(label_config: str) -> list[str] | None:
    """The label values of a config's landmark control, in order; None when it has none."""
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError:
        return None
    for control in root.iter("KeyPointLabels"):
        if control.get("name") == CONTROL_NAME:
            return [lab.get("value", "") for lab in control.iter("Label")]
    return None
