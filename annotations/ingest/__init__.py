"""Getting faces in: image folders as pools, the embedded face detectors, detector-box -> crop mapping.

:mod:`.pool` walks image folders (or reads a box file) into samples; :mod:`.detect` wraps the face
detectors that need no download; :mod:`.boxmap` fits the mapping from a detector's boxes to the
landmark box the model was trained on. Images are decoded by :mod:`pipnet_core.images`, the one
reader of the project (training, prediction and ingestion see the same pixels).
"""
