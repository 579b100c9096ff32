"""Config keys of SparseResNet and of the Faster R-CNN FPN detector that carries it (merged into
the defaults by fad.config.build)."""
from yacs.config import CfgNode as CN


def add_sparse_config(cfg: CN) -> None:
    """Add the SparseResNet (MODEL.SPARSE) and Faster R-CNN (MODEL.FASTER_RCNN) keys in place."""
    sp = cfg.MODEL.SPARSE = CN()
    sp.MASKED = True  # False: plain (optionally deformable) blocks, the dense baseline
    sp.LOSS_WEIGHT = 0.0  # sparse loss weight w (published 0.02/0.05/0.1/0.2); 0 = off
    sp.MASK_INIT_BIAS = 3.0  # initial mask logit: sampling probability sigmoid(3) = 0.953
    sp.TEMPERATURE_INIT = 1.0  # Gumbel temperature at the first training forward
    sp.TEMPERATURE_DECAY = 0.99998  # temperature factor after every training forward
    sp.TEST_TEMPERATURE = 0.03  # Gumbel temperature of stochastic sampling at inference
    sp.SAMPLING = "stochastic"  # inference: "stochastic" (Bernoulli(p)) or "deterministic" (p>=.5)
    sp.GRID_INTERVAL = 11  # grid prior: every this many rows/columns always sampled (0 = off)
    sp.INTERP_KERNEL = 7  # window of the Gaussian interpolation (odd)
    sp.INTERP_INIT_SCALE = 3.0  # initial learnable Gaussian scale s of each interpolation site
    sp.EXECUTION = "dense_masked"  # inference: "dense_masked" (reference) or "sparse" (skips work)
    sp.STAGE_WITH_DCN = (False, False, False, False)  # deformable conv2 in res2..res5

    rc = cfg.MODEL.FASTER_RCNN = CN()
    rc.RPN_PRE_NMS_TOP_N_TRAIN = 2000  # RPN proposals per level before NMS (train)
    rc.RPN_PRE_NMS_TOP_N_TEST = 1000  # RPN proposals per level before NMS (test)
    rc.RPN_POST_NMS_TOP_N_TRAIN = 2000  # RPN proposals kept after NMS (train)
    rc.RPN_POST_NMS_TOP_N_TEST = 1000  # RPN proposals kept after NMS (test)
    rc.RPN_NMS_THRESH = 0.7  # RPN NMS IoU threshold
    rc.RPN_BATCH_SIZE_PER_IMAGE = 256  # anchors sampled per image for the RPN loss
    rc.ROI_BATCH_SIZE_PER_IMAGE = 512  # proposals sampled per image for the box head loss
    rc.SCORE_THRESH = 0.05  # inference: minimum class score
    rc.NMS_THRESH = 0.5  # inference: per-class NMS IoU threshold
    rc.DETECTIONS_PER_IMG = 100  # inference: detections kept per image
