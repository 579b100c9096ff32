"""The trained detector of MODEL.WEIGHT for the tools that use one (fad-test, fad-demo).

The checkpoint decides what it can: its class names (`classes`) and, for a searched detector,
its genotype: MODEL.FAD.GENOTYPE of the config it stores (checkpoints written before that key:
their top-level `genotype`). The stored genotype wins over this run's MODEL.FAD.GENOTYPE /
`--genotype-file` (the weights were trained with it; a disagreeing one is reported in a warning
line). The weights are checked against the model the config builds by `load_model_weights` (a
one-line error when they do not fit). With SOLVER.PARALLEL_HEAD_LEVELS an FCOS head evaluates
its P3 and P4-P7 on two CPU threads, as in training.
"""
from __future__ import annotations

import logging
from typing import NamedTuple

from torch import nn
from yacs.config import CfgNode

from fad.data import build_dataset
from fad.engine.checkpoint import Checkpointer, load_model_weights
from fad.engine.distributed import get_world_size
from fad.engine.mismatch import stored_genotype
from fad.errors import ConfigError
from fad.modeling import build_detector
from fad.modeling.fcos.parallel_levels import enable_parallel_levels
from fad.nas.genotype import parse_genotype_text

logger = logging.getLogger("fad")


def with_stored_genotype(cfg: CfgNode, state: dict, weight: str) -> CfgNode:
    """`cfg` whose MODEL.FAD.GENOTYPE is the genotype checkpoint `state` (read from `weight`) was
    trained with; `cfg` itself when the checkpoint stores none. Logs which genotype is used, and
    a warning when `cfg` names other towers than the stored genotype."""
    stored, current = stored_genotype(state), cfg.MODEL.FAD.GENOTYPE
    if not stored:
        if current:
            logger.info("using the genotype of MODEL.FAD.GENOTYPE (%s stores none)", weight)
        return cfg
    if current and parse_genotype_text(current) != parse_genotype_text(
            stored, f"{weight} (stored genotype)"):
        logger.warning("warning: --genotype-file / MODEL.FAD.GENOTYPE disagrees with the genotype "
                       "stored in %s; using the stored one (the weights were trained with it)",
                       weight)
    else:
        logger.info("using the genotype stored in %s", weight)
    out = cfg.clone()
    out.defrost()
    out.MODEL.FAD.GENOTYPE = stored
    out.freeze()
    return out


class TrainedModel(NamedTuple):
    """A detector with the weights of a checkpoint (on the CPU), its class names, the training
    iteration the checkpoint was written at (0 when it does not say) and the config it was built
    from (with the stored genotype)."""

    model: nn.Module
    classes: list[str]
    iteration: int
    cfg: CfgNode


def load_trained_model(cfg: CfgNode) -> TrainedModel:
    """The detector of MODEL.WEIGHT (with the genotype it stores), checked against the config.

    Class names come from the checkpoint, else from the first DATASETS.TEST set. An exported
    `.onnx` file (fad-export) is run by ONNX Runtime (`fad.export.onnx_model.OnnxDetector`),
    with the class names of its metadata.
    """
    weight = cfg.MODEL.WEIGHT
    if not weight:
        raise ConfigError("no weights given; add MODEL.WEIGHT path/to/model_final.pth")
    if weight.endswith(".onnx"):
        from fad.export.onnx_model import OnnxDetector
        detector = OnnxDetector(weight)
        logger.info("running the exported %s with ONNX Runtime", weight)
        return TrainedModel(detector, detector.classes, 0, cfg)
    state = Checkpointer.load(weight)
    cfg = with_stored_genotype(cfg, state, weight)
    classes = state.get("classes")
    if classes is None:
        dataset = build_dataset(cfg, cfg.DATASETS.TEST[:1], is_train=False)
        classes = dataset.classes
        logger.info("%s stores no class names; using the %d classes of %s", weight,
                    len(classes), cfg.DATASETS.TEST[0])
    model = build_detector(cfg, len(classes))
    load_model_weights(model, state, weight, cfg=cfg, classes=classes,
                       genotype=cfg.MODEL.FAD.GENOTYPE,
                       build=lambda c: build_detector(c, len(classes)))
    if cfg.SOLVER.PARALLEL_HEAD_LEVELS:  # an FCOS head's P3 and P4-P7 on two CPU threads
        enable_parallel_levels(model, get_world_size())
    return TrainedModel(model, list(classes), int(state.get("iteration", 0)), cfg)
