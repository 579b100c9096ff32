"""Default configuration. Every key has a default and a one-line comment.

Topic-specific keys (FAD search/augment, SparseResNet, DETR family) live in their own
`defaults_*.py` files and are merged in by `get_cfg_defaults`.
"""
from yacs.config import CfgNode as CN

_C = CN()

_C.MODEL = CN()
_C.MODEL.META_ARCHITECTURE = "FCOS"  # detector family: FCOS, FasterRCNN, DeformableDETR, SparseDETR
_C.MODEL.DEVICE = "auto"  # "auto" (cuda when present, else cpu), "cpu", "cuda", "cuda:1"
_C.MODEL.WEIGHT = ""  # checkpoint to load before training/testing ("" = none)
_C.MODEL.NUM_CLASSES = 0  # foreground classes; 0 = take it from the training dataset

_C.MODEL.OPS = CN()  # op backends (docs/ops.md); FAD_<OP>_BACKEND environment variables override
_C.MODEL.OPS.MSDA_BACKEND = "auto"  # deformable attention: auto, reference, cpp, cuda, triton
_C.MODEL.OPS.DEPTHWISE_BACKEND = "auto"  # depthwise 3x3 conv (FAD units): auto, reference, cpp
_C.MODEL.OPS.SPARSE_BACKEND = "auto"  # SparseResNet sparse execution: auto, reference, cpp

_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.NAME = "resnet"  # "resnet" or "sparse_resnet"
_C.MODEL.BACKBONE.DEPTH = 50  # ResNet depth: 18, 34, 50, 101 (152 also works)
_C.MODEL.BACKBONE.FREEZE_AT = 2  # freeze stem (1) and up to this stage (2 = stem+res2); 0 = none
_C.MODEL.BACKBONE.NORM = "FrozenBN"  # backbone norm: "FrozenBN" or "BN"
_C.MODEL.BACKBONE.NORM_EVAL = False  # NORM BN: frozen running stats, trainable affine (mmdet)
_C.MODEL.BACKBONE.PRETRAINED = ""  # "" random init, a local .pth path, or "torchvision" (download)
_C.MODEL.BACKBONE.WIDTH_PER_GROUP = 64  # ResNeXt width per group (64 = plain ResNet)
_C.MODEL.BACKBONE.GROUPS = 1  # ResNeXt groups (1 = plain ResNet)

_C.MODEL.FPN = CN()
_C.MODEL.FPN.OUT_CHANNELS = 256  # FPN width
_C.MODEL.FPN.USE_P5_FOR_P6 = True  # P6 from P5 (FCOS-imprv) rather than from C5

_C.MODEL.FCOS = CN()
_C.MODEL.FCOS.NUM_CONVS = 4  # conv3x3+GN+ReLU layers per tower in the plain head
_C.MODEL.FCOS.PRIOR_PROB = 0.01  # initial foreground probability of the classifier
_C.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 1.5  # positives within this many strides of a box centre
_C.MODEL.FCOS.FOCAL_ALPHA = 0.25  # sigmoid focal loss alpha
_C.MODEL.FCOS.FOCAL_GAMMA = 2.0  # sigmoid focal loss gamma
_C.MODEL.FCOS.SCORE_THRESH = 0.05  # inference: minimum classification score before centerness
_C.MODEL.FCOS.TOPK_CANDIDATES = 1000  # inference: candidates kept per level
_C.MODEL.FCOS.NMS_THRESH = 0.6  # inference: class-aware NMS IoU threshold
_C.MODEL.FCOS.DETECTIONS_PER_IMG = 100  # inference: detections kept per image

_C.INPUT = CN()
_C.INPUT.MIN_SIZE_TRAIN = (800,)  # training short side; one is drawn at random per image
_C.INPUT.MAX_SIZE_TRAIN = 1333  # training long side cap
_C.INPUT.MIN_SIZE_TEST = 800  # test short side
_C.INPUT.MAX_SIZE_TEST = 1333  # test long side cap
_C.INPUT.FLIP_PROB_TRAIN = 0.5  # horizontal flip probability in training
_C.INPUT.PIXEL_MEAN = (0.485, 0.456, 0.406)  # RGB mean of [0,1] images (ImageNet)
_C.INPUT.PIXEL_STD = (0.229, 0.224, 0.225)  # RGB std of [0,1] images (ImageNet)
_C.INPUT.SIZE_DIVISIBILITY = 32  # batched images are padded to a multiple of this
_C.INPUT.CROP = CN()  # DETR-style crop branch (ASAG 3x): flip, [resize + crop], MIN_SIZE_TRAIN
_C.INPUT.CROP.ENABLED = False  # after the flip, the resize + random crop branch with prob PROB
_C.INPUT.CROP.PROB = 0.5  # probability of the resize + crop branch (else the plain resize only)
_C.INPUT.CROP.RESIZE_SIZES = (400, 500, 600)  # short side before the crop, no long-side cap
_C.INPUT.CROP.SIZE = (384, 600)  # crop h and w each drawn from [min, min(image side, max)]

_C.DATASETS = CN()
_C.DATASETS.ROOT = "datasets"  # folder the catalog's relative paths resolve under
_C.DATASETS.TRAIN = ("synthetic_coco_train",)  # catalog names used for training
_C.DATASETS.TEST = ("synthetic_coco_val",)  # catalog names for testing (train/test; not search)
# Extra datasets registered from the config, no code: a list of
# "name:format:path[:split]" entries, format voc or coco; coco paths are "images_dir,ann.json".
_C.DATASETS.REGISTER = ()  # e.g. ("mydata_train:voc:/data/MyVOC:train",)

_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 2  # loader worker processes per rank
_C.DATALOADER.ASPECT_RATIO_GROUPING = True  # batch portrait and landscape images separately

_C.SOLVER = CN()
_C.SOLVER.OPTIMIZER = "SGD"  # "SGD" or "AdamW"
_C.SOLVER.MAX_ITER = 90000  # training iterations
_C.SOLVER.BASE_LR = 0.01  # learning rate at batch IMS_PER_BATCH
_C.SOLVER.BIAS_LR_FACTOR = 2.0  # bias parameters get BASE_LR * this
_C.SOLVER.MOMENTUM = 0.9  # SGD momentum
_C.SOLVER.WEIGHT_DECAY = 1e-4  # weight decay of weights
_C.SOLVER.WEIGHT_DECAY_BIAS = 0.0  # weight decay of biases
_C.SOLVER.STEPS = (60000, 80000)  # iterations where lr is multiplied by GAMMA
_C.SOLVER.GAMMA = 0.1  # lr decay factor at each step
_C.SOLVER.WARMUP_FACTOR = 1.0 / 3  # lr factor at iteration 0 of the linear warm-up
_C.SOLVER.WARMUP_ITERS = 500  # linear warm-up length
_C.SOLVER.IMS_PER_BATCH = 16  # images per iteration over all ranks
_C.SOLVER.CHECKPOINT_PERIOD = 2500  # write a checkpoint every this many iterations
_C.SOLVER.CHECKPOINT_KEEP = 0  # keep the newest N periodic checkpoints (+ model_final); 0 = all
_C.SOLVER.CLIP_GRAD_NORM = 0.0  # max total grad norm (0 = no clipping)
_C.SOLVER.AMP = True  # mixed precision: fp16 autocast + loss scaling on CUDA
_C.SOLVER.AMP_CPU = False  # with SOLVER.AMP: bf16 autocast on the CPU too (bf16-capable CPUs)
_C.SOLVER.LOG_PERIOD = 20  # iterations between log lines

_C.TEST = CN()
_C.TEST.IMS_PER_BATCH = 8  # images per test batch over all ranks

_C.OUTPUT_DIR = "output"  # where checkpoints, logs, metrics and genotypes go
_C.SEED = 0  # random seed (python, numpy, torch); < 0 picks one from the clock
_C.NUM_THREADS = 0  # intra-op CPU threads per process; 0 = torch default (1 on a busy machine)
