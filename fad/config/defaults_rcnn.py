"""Config keys of the Faster R-CNN FPN detector (torchvision's, carrying a ResNet or a
SparseResNet backbone); merged into the defaults by fad.config.build."""
from .rules import Node as CN
from .rules import positive, probability


def add_rcnn_config(cfg: CN) -> None:
    """Add the Faster R-CNN (MODEL.FASTER_RCNN) keys in place."""
    rc = cfg.MODEL.FASTER_RCNN = CN()
    rc.RPN_PRE_NMS_TOP_N_TRAIN = positive(2000)  # RPN proposals per level before NMS (train)
    rc.RPN_PRE_NMS_TOP_N_TEST = positive(1000)  # RPN proposals per level before NMS (test)
    rc.RPN_POST_NMS_TOP_N_TRAIN = positive(2000)  # RPN proposals kept after NMS (train)
    rc.RPN_POST_NMS_TOP_N_TEST = positive(1000)  # RPN proposals kept after NMS (test)
    rc.RPN_NMS_THRESH = probability(0.7)  # RPN NMS IoU threshold
    rc.RPN_BATCH_SIZE_PER_IMAGE = positive(256)  # anchors sampled per image for the RPN loss
    rc.ROI_BATCH_SIZE_PER_IMAGE = positive(512)  # proposals sampled per image for the box head loss
    rc.SCORE_THRESH = probability(0.05)  # inference: minimum class score
    rc.NMS_THRESH = probability(0.5)  # inference: per-class NMS IoU threshold
    rc.DETECTIONS_PER_IMG = positive(100)  # inference: detections kept per image
