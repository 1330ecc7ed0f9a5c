"""The Label Studio labeling config generated from a landmark scheme.

One ``<KeyPointLabels>`` control with one ``<Label>`` per landmark, in scheme order. The landmark's
index then travels in ``value.keypointlabels[0]`` of every result item and survives a human drag in
the real UI; ``model_index`` is what the SDK's COCO/YOLO keypoint converter reads, and
``maxUsages="1"`` stops a reviewer from placing the same landmark twice (docs/review.md section 3.1; tags:
https://labelstud.io/tags/keypointlabels, https://labelstud.io/tags/label). Labels are coloured by
the scheme's regions so that a 68-button palette stays readable. An optional single-choice
``face_status`` lets a reviewer reject a sample (bad image, no face) instead of correcting it.
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from pipnet_core.schemes import Scheme

__all__ = [
    "CHOICES_NAME",
    "CONTROL_NAME",
    "IMAGE_NAME",
    "POINT_WIDTH",
    "REGION_COLOURS",
    "REJECT_CHOICES",
    "STATUS_CHOICES",
    "labeling_config",
]

CONTROL_NAME = "kp"  # from_name of every landmark result item
IMAGE_NAME = "image"  # to_name, and the task data key holding the image URL ($image)
CHOICES_NAME = "face_status"
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


def labeling_config(scheme: Scheme, reject_choices: bool = True) -> str:
    """The labeling config XML for reviewing ``scheme`` landmarks.

    Args:
        scheme: The store's landmark layout; label values are ``scheme.landmark_names``.
        reject_choices: Add the ``face_status`` choices (ok / bad image / no face).

    Returns:
        The XML text, accepted by ``POST /api/projects`` as ``label_config``.
    """
    regions = scheme.region_of()
    labels = "\n".join(
        f"    <Label value={quoteattr(name)} model_index={quoteattr(str(i))}"
        f" background={quoteattr(REGION_COLOURS.get(regions[i], REGION_COLOURS['other']))}"
        f' maxUsages="1" hint={quoteattr(f"{regions[i]} {i}")}/>'
        for i, name in enumerate(scheme.landmark_names)
    )
    parts = [
        "<View>",
        f"  <Header value={quoteattr(f'Move the {scheme.num_landmarks} {scheme.name} landmarks that are wrong')}/>",
        f'  <Image name="{IMAGE_NAME}" value="${IMAGE_NAME}" zoom="true" zoomControl="true" rotateControl="false"/>',
        f'  <KeyPointLabels name="{CONTROL_NAME}" toName="{IMAGE_NAME}" strokeWidth="1">',
        labels,
        "  </KeyPointLabels>",
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
