"""The trained detector of MODEL.WEIGHT for the tools that use one (fad-test, fad-demo).

The checkpoint decides what it can: its class names (`classes`) and, for a searched detector,
its genotype (`genotype`), which wins over `--genotype-file` (the weights were trained with
it; a disagreeing file is reported in a warning line). The weights are checked against the
model the config builds by `load_model_weights` (a one-line error when they do not fit).
"""
from __future__ import annotations

import logging
from typing import NamedTuple

from torch import nn
from yacs.config import CfgNode

from fad.augment import build_model
from fad.data import build_dataset
from fad.engine.checkpoint import Checkpointer, load_model_weights
from fad.errors import ConfigError
from fad.nas.genotype import parse_genotype_text, read_genotype_text

logger = logging.getLogger("fad")


def choose_genotype(stored: str, genotype_file: str, weight: str) -> tuple[str, str]:
    """(genotype text, where it came from): the checkpoint's `stored` genotype when it has one,
    else the text of `genotype_file` (or "" for no genotype). Logs which is used, and a warning
    when `genotype_file` names other towers than the stored genotype."""
    if not stored:
        if not genotype_file:
            return "", ""
        logger.info("using the genotype of %s (the checkpoint stores none)", genotype_file)
        return read_genotype_text(genotype_file), genotype_file
    source = f"{weight} (stored genotype)"
    if genotype_file:
        given = parse_genotype_text(read_genotype_text(genotype_file), genotype_file)
        if given != parse_genotype_text(stored, source):
            logger.warning("warning: --genotype-file %s disagrees with the genotype stored in %s; "
                           "using the stored one (the weights were trained with it)",
                           genotype_file, weight)
            return stored, source
    logger.info("using the genotype stored in %s", weight)
    return stored, source


class TrainedModel(NamedTuple):
    """A detector with the weights of a checkpoint (on the CPU), its class names, and the
    training iteration the checkpoint was written at (0 when it does not say)."""

    model: nn.Module
    classes: list[str]
    iteration: int


def load_trained_model(cfg: CfgNode, genotype_file: str = "") -> TrainedModel:
    """The detector of MODEL.WEIGHT, checked against the config.

    Class names come from the checkpoint, else from the first DATASETS.TEST set.
    """
    weight = cfg.MODEL.WEIGHT
    if not weight:
        raise ConfigError("no weights given; add MODEL.WEIGHT path/to/model_final.pth")
    state = Checkpointer.load(weight)
    genotype, source = choose_genotype(state.get("genotype", ""), genotype_file, weight)
    classes = state.get("classes")
    if classes is None:
        dataset = build_dataset(cfg, cfg.DATASETS.TEST[:1], is_train=False)
        classes = dataset.classes
        logger.info("%s stores no class names; using the %d classes of %s", weight,
                    len(classes), cfg.DATASETS.TEST[0])
    model = build_model(cfg, len(classes), genotype, source)
    load_model_weights(model, state, weight, cfg=cfg, classes=classes, genotype=genotype)
    return TrainedModel(model, list(classes), int(state.get("iteration", 0)))
