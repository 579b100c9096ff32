"""Config keys of FAD search and augment (merged into the defaults by fad.config.build)."""
from yacs.config import CfgNode as CN


def add_fad_config(cfg: CN) -> None:
    """Add the FAD search and augment keys to `cfg` in place."""
    cfg.MODEL.FAD = CN()
    cfg.MODEL.FAD.TOWER_CHANNELS = 256  # width of cell inputs, nodes and reduce convs (paper: 256)
    cfg.MODEL.FAD.EDGE_CHANNELS = 96  # width C each edge's op runs at (96; 128 for X-101)
    cfg.MODEL.FAD.NUM_NODES = 3  # intermediate nodes per cell (a genotype must have this many)
    cfg.MODEL.FAD.BOX_CELLS = 2  # augment: cells in the box-regression tower
    cfg.MODEL.FAD.CLS_CELLS = 2  # augment: cells in the classification tower
    # search: add the dilation-3 candidate `A_conv_3x3+dil_conv_3x3_r3` per family (12 + none
    # alphas per edge); off as in the paper's reference, which found it hurt detection
    cfg.MODEL.FAD.DIL3 = False
    cfg.MODEL.FAD.SEARCH_CELLS = 1  # search: cells per tower in the supernet (alphas shared)
    # search cost term (docs/fad.md): penalty on the derived head's expected cost, alpha loss
    cfg.MODEL.FAD.COST = "none"  # none (the original objective), flops or latency
    cfg.MODEL.FAD.COST_TARGET = 0.0  # head budget: GFLOPs (flops) or ms (latency), COST_INPUT_SIZE
    cfg.MODEL.FAD.COST_PENALTY = "hinge"  # hinge: w*max(0, cost/target-1); log: w*log(cost/target)
    cfg.MODEL.FAD.COST_WEIGHT = 1.0  # w, the penalty's weight next to the val loss
    cfg.MODEL.FAD.COST_INPUT_SIZE = ()  # (H, W) of the cost; (): search input
    cfg.MODEL.FAD.COST_LATENCY_TABLE = ""  # COST latency: JSON of `fad-bench op_latency`

    cfg.SEARCH = CN()
    cfg.SEARCH.VAL_FRACTION = 0.5  # share of the search set held out as the alpha ("val") half
    cfg.SEARCH.ARCH_LR = 3e-4  # Adam learning rate of the alphas
    cfg.SEARCH.ARCH_BETAS = (0.5, 0.999)  # Adam betas of the alphas
    cfg.SEARCH.ARCH_WEIGHT_DECAY = 1e-3  # Adam weight decay of the alphas
    cfg.SEARCH.ALPHA_INIT_STD = 1e-3  # alphas start as this * N(0, 1)
    cfg.SEARCH.SECOND_ORDER = False  # unrolled (second-order) alpha gradient; memory-heavy
    cfg.SEARCH.DIAGRAM_FORMAT = "png"  # rendered genotype diagrams: png or svg (.gv always)
