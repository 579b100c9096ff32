"""Config keys of SparseResNet and of the Faster R-CNN FPN detector that carries it (merged into
the defaults by fad.config.build)."""
from yacs.config import CfgNode as CN


def add_sparse_config(cfg: CN) -> None:
    """Add the SparseResNet (MODEL.SPARSE) and Faster R-CNN (MODEL.FASTER_RCNN) keys in place."""
    cfg.MODEL.SPARSE = CN()
    cfg.MODEL.SPARSE.MASKED = True  # False: plain (optionally deformable) blocks, the dense baseline
    cfg.MODEL.SPARSE.LOSS_WEIGHT = 0.0  # sparse loss weight w (published 0.02/0.05/0.1/0.2); 0 = off
    cfg.MODEL.SPARSE.MASK_INIT_BIAS = 3.0  # initial mask logit: sampling probability sigmoid(3)=0.953
    cfg.MODEL.SPARSE.TEMPERATURE_INIT = 1.0  # Gumbel temperature at the first training forward
    cfg.MODEL.SPARSE.TEMPERATURE_DECAY = 0.99998  # temperature factor after every training forward
    cfg.MODEL.SPARSE.TEST_TEMPERATURE = 0.03  # Gumbel temperature of stochastic inference sampling
    cfg.MODEL.SPARSE.SAMPLING = "stochastic"  # inference: "stochastic" (Bernoulli(p)) or "deterministic" (p>=0.5)
    cfg.MODEL.SPARSE.GRID_INTERVAL = 11  # grid prior: every this many rows/columns always sampled (0 = off)
    cfg.MODEL.SPARSE.INTERP_KERNEL = 7  # window of the Gaussian interpolation (odd)
    cfg.MODEL.SPARSE.INTERP_INIT_SCALE = 3.0  # initial learnable Gaussian scale s of each interpolation
    cfg.MODEL.SPARSE.EXECUTION = "dense_masked"  # inference: "dense_masked" (reference) or "sparse" (skip work)
    cfg.MODEL.SPARSE.STAGE_WITH_DCN = (False, False, False, False)  # deformable conv2 in res2..res5

    cfg.MODEL.FASTER_RCNN = CN()
    cfg.MODEL.FASTER_RCNN.RPN_PRE_NMS_TOP_N_TRAIN = 2000  # RPN proposals per level before NMS (train)
    cfg.MODEL.FASTER_RCNN.RPN_PRE_NMS_TOP_N_TEST = 1000  # RPN proposals per level before NMS (test)
    cfg.MODEL.FASTER_RCNN.RPN_POST_NMS_TOP_N_TRAIN = 2000  # RPN proposals kept after NMS (train)
    cfg.MODEL.FASTER_RCNN.RPN_POST_NMS_TOP_N_TEST = 1000  # RPN proposals kept after NMS (test)
    cfg.MODEL.FASTER_RCNN.RPN_NMS_THRESH = 0.7  # RPN NMS IoU threshold
    cfg.MODEL.FASTER_RCNN.RPN_BATCH_SIZE_PER_IMAGE = 256  # anchors sampled per image for the RPN loss
    cfg.MODEL.FASTER_RCNN.ROI_BATCH_SIZE_PER_IMAGE = 512  # proposals sampled per image for the box head
    cfg.MODEL.FASTER_RCNN.SCORE_THRESH = 0.05  # inference: minimum class score
    cfg.MODEL.FASTER_RCNN.NMS_THRESH = 0.5  # inference: per-class NMS IoU threshold
    cfg.MODEL.FASTER_RCNN.DETECTIONS_PER_IMG = 100  # inference: detections kept per image
