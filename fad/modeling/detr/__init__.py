"""Deformable DETR and Sparse DETR: a whole detector in a handful of flat files.

backbone.py (ResNet body + multi-level input projection) -> position_encoding.py ->
transformer.py (the whole transformer: encoder.py, or sparse_encoder.py for Sparse DETR's token
selection; proposals.py for two-stage; decoder.py with box refinement) -> heads.py -> matcher.py /
criterion.py / dam.py (training) or postprocess.py (inference); detector.py ties them together
and build.py reads the config.
"""
