"""Synthetic faces with an exact 68-point ground truth: the data source of the demo, the tests and the benchmarks.

Not part of the label store: it writes ordinary image files with 300W ``.pts`` files beside them,
which enter a store through the same importers as real data. :mod:`.generator` holds the domains
and the dataset writer; ``_shape`` (the 3D landmark layout) and ``_draw`` (rendering) are its
private helpers. NumPy and OpenCV only.
"""

from synthetic_faces.generator import (
    DOMAINS,
    NUM_LANDMARKS,
    DomainConfig,
    generate_batch,
    generate_face,
    iter_faces,
    write_dataset,
)

__all__ = ["DOMAINS", "NUM_LANDMARKS", "DomainConfig", "generate_batch", "generate_face", "iter_faces", "write_dataset"]
