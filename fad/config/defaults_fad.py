"""Config keys of FAD search and augment (merged into the defaults by fad.config.build)."""
from .rules import Node as CN
from .rules import choice, fraction, in_range, non_negative, positive


def add_fad_config(cfg: CN) -> None:
    """Add the FAD search and augment keys to `cfg` in place."""
    cfg.MODEL.FAD = CN()
    # width of cell inputs, nodes and reduce convs (paper: 256)
    cfg.MODEL.FAD.TOWER_CHANNELS = positive(256)
    cfg.MODEL.FAD.EDGE_CHANNELS = positive(96)  # width C each edge's op runs at (96; 128 for X-101)
    # intermediate nodes per cell (a genotype must have this many)
    cfg.MODEL.FAD.NUM_NODES = positive(3)
    cfg.MODEL.FAD.BOX_CELLS = positive(2)  # augment: cells in the box-regression tower
    cfg.MODEL.FAD.CLS_CELLS = positive(2)  # augment: cells in the classification tower
    # augment: the searched towers, a genotype file path or its two Genotype lines (box, cls); a
    # path becomes the text when a tool loads the config; "" = the plain FCOS head
    cfg.MODEL.FAD.GENOTYPE = ""
    # search: add the dilation-3 candidate `A_conv_3x3+dil_conv_3x3_r3` per family (12 + none
    # alphas per edge); off as in the paper's reference, which found it hurt detection
    cfg.MODEL.FAD.DIL3 = False
    # search: cells per tower in the supernet (alphas shared)
    cfg.MODEL.FAD.SEARCH_CELLS = positive(1)
    # search cost term (docs/fad.md): penalty on the derived head's expected cost, alpha loss
    cfg.MODEL.FAD.COST = choice("none", ("none", "flops", "latency"))  # none: the original
    # head budget: GFLOPs (flops) or ms (latency), COST_INPUT_SIZE
    cfg.MODEL.FAD.COST_TARGET = non_negative(0.0)
    cfg.MODEL.FAD.COST_PENALTY = choice(  # hinge: w*max(0, cost/target-1); log: w*log(cost/target)
        "hinge", ("hinge", "log"))
    cfg.MODEL.FAD.COST_WEIGHT = non_negative(1.0)  # w, the penalty's weight next to the val loss
    cfg.MODEL.FAD.COST_INPUT_SIZE = positive((), lengths=(0, 2))  # (H, W) of the cost; (): input
    cfg.MODEL.FAD.COST_LATENCY_TABLE = ""  # COST latency: JSON of `fad-bench op_latency`

    cfg.SEARCH = CN()
    # share of the search set held out as the alpha ("val") half
    cfg.SEARCH.VAL_FRACTION = fraction(0.5)
    cfg.SEARCH.ARCH_LR = positive(3e-4)  # Adam learning rate of the alphas
    cfg.SEARCH.ARCH_BETAS = in_range(  # Adam betas of the alphas
        (0.5, 0.999), 0, 1, high_open=True, lengths=(2,))
    cfg.SEARCH.ARCH_WEIGHT_DECAY = non_negative(1e-3)  # Adam weight decay of the alphas
    cfg.SEARCH.ALPHA_INIT_STD = non_negative(1e-3)  # alphas start as this * N(0, 1)
    cfg.SEARCH.SECOND_ORDER = False  # unrolled (second-order) alpha gradient; memory-heavy
    # rendered genotype diagrams: png or svg (.gv always)
    cfg.SEARCH.DIAGRAM_FORMAT = choice("png", ("png", "svg"))
