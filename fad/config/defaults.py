"""Default configuration. Every key has a default and a one-line comment.

A key with a restricted value sets its default through its rule (`fad/config/rules.py`):
`choice(default, choices)`, `pattern`, `positive`, `non_negative`, `probability` (in [0, 1]),
`fraction` (in (0, 1)), `in_range`; `load_config` checks every value against it. Topic-specific
keys (FAD search/augment, SparseResNet, DETR family) live in their own `defaults_*.py` files and
are merged in by `get_cfg_defaults`.
"""
from .rules import Node as CN
from .rules import choice, fraction, in_range, non_negative, pattern, positive, probability

_C = CN()

_C.MODEL = CN()
_C.MODEL.META_ARCHITECTURE = choice(  # detector family
    "FCOS", ("FCOS", "FasterRCNN", "DeformableDETR", "SparseDETR", "ASAG"))
_C.MODEL.DEVICE = pattern(  # "auto" = cuda when present, else cpu
    "auto", r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda, cuda:N", ("auto", "cpu", "cuda"))
_C.MODEL.WEIGHT = ""  # checkpoint to load before training/testing ("" = none)
_C.MODEL.NUM_CLASSES = non_negative(0)  # foreground classes; 0 = take it from the training dataset

_C.MODEL.OPS = CN()  # op backends (docs/ops.md); FAD_<OP>_BACKEND environment variables override
_C.MODEL.OPS.MSDA_BACKEND = choice(  # deformable attention
    "auto", ("auto", "reference", "cpp", "cuda", "triton"))
_C.MODEL.OPS.DEPTHWISE_BACKEND = choice("auto", ("auto", "reference", "cpp"))  # FAD depthwise 3x3
_C.MODEL.OPS.SPARSE_BACKEND = choice("auto", ("auto", "reference", "cpp"))  # SparseResNet execution
_C.MODEL.OPS.MIX_BACKEND = choice("auto", ("auto", "reference", "cpp"))  # FAD supernet edge mixing
_C.MODEL.OPS.GN_RELU_BACKEND = choice("auto", ("auto", "reference", "cpp"))  # GN + ReLU, NHWC
# conv weight gradient: reference = aten's (oneDNN), gemm = im2col GEMMs, cpp = the direct
# kernel, auto = gemm or cpp by layer on AVX2 (fad/ops/conv_wgrad/dispatch.py)
_C.MODEL.OPS.CONV_WGRAD_BACKEND = choice("auto", ("auto", "reference", "gemm", "cpp"))

_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.NAME = choice("resnet", ("resnet", "sparse_resnet"))  # backbone body
_C.MODEL.BACKBONE.DEPTH = choice(50, (18, 34, 50, 101, 152))  # ResNet depth
_C.MODEL.BACKBONE.FREEZE_AT = in_range(2, 0, 5)  # freeze stem (1) and up to this stage (2 = +res2)
_C.MODEL.BACKBONE.NORM = choice("FrozenBN", ("FrozenBN", "BN"))  # backbone norm
_C.MODEL.BACKBONE.NORM_EVAL = False  # NORM BN: frozen running stats, trainable affine (mmdet)
_C.MODEL.BACKBONE.PRETRAINED = ""  # "" random init, a local .pth path, or "torchvision" (download)
_C.MODEL.BACKBONE.WIDTH_PER_GROUP = positive(64)  # ResNeXt width per group (64 = plain ResNet)
_C.MODEL.BACKBONE.GROUPS = positive(1)  # ResNeXt groups (1 = plain ResNet)

_C.MODEL.FPN = CN()
_C.MODEL.FPN.OUT_CHANNELS = positive(256)  # FPN width
_C.MODEL.FPN.USE_P5_FOR_P6 = True  # P6 from P5 (FCOS-imprv) rather than from C5

_C.MODEL.FCOS = CN()
_C.MODEL.FCOS.NUM_CONVS = non_negative(4)  # conv3x3+GN+ReLU layers per tower in the plain head
_C.MODEL.FCOS.PRIOR_PROB = fraction(0.01)  # initial foreground probability of the classifier
_C.MODEL.FCOS.CENTER_SAMPLING_RADIUS = non_negative(1.5)  # positives within this many strides
_C.MODEL.FCOS.FOCAL_ALPHA = probability(0.25)  # sigmoid focal loss alpha
_C.MODEL.FCOS.FOCAL_GAMMA = non_negative(2.0)  # sigmoid focal loss gamma
_C.MODEL.FCOS.SCORE_THRESH = probability(0.05)  # inference: min class score before centerness
_C.MODEL.FCOS.TOPK_CANDIDATES = positive(1000)  # inference: candidates kept per level
_C.MODEL.FCOS.NMS_THRESH = probability(0.6)  # inference: class-aware NMS IoU threshold
_C.MODEL.FCOS.DETECTIONS_PER_IMG = positive(100)  # inference: detections kept per image

_C.INPUT = CN()
_C.INPUT.MIN_SIZE_TRAIN = positive((800,))  # training short side; one is drawn at random per image
_C.INPUT.MAX_SIZE_TRAIN = positive(1333)  # training long side cap
_C.INPUT.MIN_SIZE_TEST = positive(800)  # test short side
_C.INPUT.MAX_SIZE_TEST = positive(1333)  # test long side cap
_C.INPUT.FLIP_PROB_TRAIN = probability(0.5)  # horizontal flip probability in training
_C.INPUT.PIXEL_MEAN = in_range((0.485, 0.456, 0.406), lengths=(3,))  # RGB mean of [0,1] images
_C.INPUT.PIXEL_STD = positive((0.229, 0.224, 0.225), lengths=(3,))  # RGB std (ImageNet)
_C.INPUT.SIZE_DIVISIBILITY = positive(32)  # batched images are padded to a multiple of this
_C.INPUT.CROP = CN()  # DETR-style crop branch (ASAG 3x): flip, [resize + crop], MIN_SIZE_TRAIN
_C.INPUT.CROP.ENABLED = False  # after the flip, the resize + random crop branch with prob PROB
_C.INPUT.CROP.PROB = probability(0.5)  # probability of the resize + crop branch (else resize)
_C.INPUT.CROP.RESIZE_SIZES = positive((400, 500, 600))  # short side before the crop, no cap
_C.INPUT.CROP.SIZE = positive((384, 600), lengths=(2,))  # crop h, w from [min, min(side, max)]

_C.DATASETS = CN()
_C.DATASETS.ROOT = "datasets"  # folder the catalog's relative paths resolve under
_C.DATASETS.TRAIN = ("synthetic_coco_train",)  # catalog names used for training
_C.DATASETS.TEST = ("synthetic_coco_val",)  # catalog names for testing (train/test; not search)
# Extra datasets registered from the config, no code: a list of
# "name:format:path[:split]" entries, format voc or coco; coco paths are "images_dir,ann.json".
_C.DATASETS.REGISTER = ()  # e.g. ("mydata_train:voc:/data/MyVOC:train",)
_C.DATASETS.CHECK_IMAGES = True  # decode every image before the first step (cached; docs/data.md)
_C.DATASETS.CHECK_WORKERS = non_negative(0)  # processes decoding that check; 0 = one per core

_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = non_negative(2)  # loader worker processes per rank
_C.DATALOADER.ASPECT_RATIO_GROUPING = True  # batch portrait and landscape images separately
# Batch images of one padded training size together (size at max MIN_SIZE_TRAIN, padded to
# SIZE_DIVISIBILITY; a size with fewer images than a batch joins the next): less padding to
# compute (docs/data.md)
_C.DATALOADER.SIZE_GROUPING = False

_C.SOLVER = CN()
_C.SOLVER.OPTIMIZER = choice("SGD", ("SGD", "AdamW"))  # "SGD" or "AdamW"
_C.SOLVER.MAX_ITER = positive(90000)  # training iterations
_C.SOLVER.BASE_LR = positive(0.01)  # learning rate at batch IMS_PER_BATCH
_C.SOLVER.BIAS_LR_FACTOR = non_negative(2.0)  # bias parameters get BASE_LR * this
_C.SOLVER.MOMENTUM = in_range(0.9, 0, 1, high_open=True)  # SGD momentum
_C.SOLVER.WEIGHT_DECAY = non_negative(1e-4)  # weight decay of weights
_C.SOLVER.WEIGHT_DECAY_BIAS = non_negative(0.0)  # weight decay of biases
_C.SOLVER.STEPS = positive((60000, 80000))  # iterations where lr is multiplied by GAMMA
_C.SOLVER.GAMMA = positive(0.1)  # lr decay factor at each step
_C.SOLVER.WARMUP_FACTOR = in_range(1.0 / 3, 0, 1, low_open=True)  # lr factor at warm-up start
_C.SOLVER.WARMUP_ITERS = non_negative(500)  # linear warm-up length
_C.SOLVER.IMS_PER_BATCH = positive(16)  # images per iteration over all ranks
_C.SOLVER.CHECKPOINT_PERIOD = positive(2500)  # write a checkpoint every this many iterations
_C.SOLVER.CHECKPOINT_KEEP = non_negative(0)  # keep the newest N (>= 2) periodic ckpts; 0 = all
_C.SOLVER.CLIP_GRAD_NORM = non_negative(0.0)  # max total grad norm (0 = no clipping)
_C.SOLVER.AMP = True  # mixed precision: fp16 autocast + loss scaling on CUDA
_C.SOLVER.AMP_CPU = False  # with SOLVER.AMP: bf16 autocast on the CPU too (bf16-capable CPUs)
# AMP_CPU over: all, backbone+FPN, backbone+FPN + the towers' big convs (fad/engine/amp.py)
_C.SOLVER.AMP_CPU_SCOPE = choice("model", ("model", "backbone", "towers"))
_C.SOLVER.COMPILE = False  # torch.compile the model of the training step (docs/ops.md)
_C.SOLVER.CHANNELS_LAST = True  # detector training in NHWC memory (faster convs; docs/ops.md)
# CPU, one process: the FCOS head's P3 and its P4-P7 on two threads, training and eval (docs/ops.md)
_C.SOLVER.PARALLEL_HEAD_LEVELS = False
# training (NHWC): the FCOS head's levels packed in one map, the towers run once (fad/modeling/
# fcos/mosaic.py); in training it takes the place of PARALLEL_HEAD_LEVELS, which eval still uses
_C.SOLVER.MOSAIC_HEAD_LEVELS = False
_C.SOLVER.LOG_PERIOD = positive(20)  # iterations between log lines

_C.TEST = CN()
_C.TEST.IMS_PER_BATCH = positive(8)  # images per test batch over all ranks

_C.OUTPUT_DIR = "output"  # where checkpoints, logs, metrics and genotypes go
_C.SEED = 0  # random seed (python, numpy, torch); < 0 picks one from the clock
_C.NUM_THREADS = non_negative(0)  # intra-op threads per process; 0: torch default, 1 while busy
