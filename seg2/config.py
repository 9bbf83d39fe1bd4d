"""Every config default seg2 adds to Detectron2, in one place.

New keys live only under ``MODEL.SEG2``, ``INPUT.SEG2``, ``DATASETS.SEG2``, ``TEST.SEG2``
and ``SOLVER.SEG2``; core keys are reused where the meaning matches
(``MODEL.SEM_SEG_HEAD.NUM_CLASSES``, ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``, ...).
"""
import torch
from detectron2.config import CfgNode as CN


def add_seg2_config(cfg: CN) -> CN:
    """Add seg2's defaults to a Detectron2 config (in place) and return it."""
    # Detectron2 defaults to "cuda", which fails on CPU-only machines; pick what exists.
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

    cfg.MODEL.SEG2 = CN()

    # ---- upsampling op used by the semantic heads (registry in seg2/modeling/upsample.py)
    cfg.MODEL.SEG2.UPSAMPLE = CN()
    # One of: nearest, bed_of_nails, max_unpool, bilinear, transposed. Read by FCN and
    # U-Net, which reject max_unpool (backbones carry no pooling switches); DeconvNet always
    # unpools with its own switches.
    cfg.MODEL.SEG2.UPSAMPLE.NAME = "bilinear"
    # Only for bilinear; False matches torch's default and the FCN paper's kernel.
    cfg.MODEL.SEG2.UPSAMPLE.ALIGN_CORNERS = False
    # Only for transposed: start from the bilinear kernel (FCN paper) instead of random.
    cfg.MODEL.SEG2.UPSAMPLE.BILINEAR_INIT = True

    # ---- FCN head: which backbone levels are fused. 32s = [res5]; 16s = [res5, res4];
    # 8s = [res5, res4, res3]. Coarsest first.
    cfg.MODEL.SEG2.FCN = CN()
    cfg.MODEL.SEG2.FCN.IN_FEATURES = ["res5", "res4", "res3"]

    # ---- U-Net head and the classic U-Net encoder (backbone "build_unet_backbone")
    cfg.MODEL.SEG2.UNET = CN()
    # Encoder levels the decoder consumes, coarsest first, each stride a multiple of the
    # next (classic encoder: e.g. [res5, res4, res3, res2, res1]).
    cfg.MODEL.SEG2.UNET.IN_FEATURES = ["res5", "res4", "res3", "res2"]
    # Decoder channels per level (same length as IN_FEATURES).
    cfg.MODEL.SEG2.UNET.DECODER_CHANNELS = [256, 128, 64, 32]
    # "crop": valid convolutions + centre crop of the skip (paper); "pad": same-size convs.
    # With build_unet_backbone, crop also makes the encoder valid and mirror-pads the input
    # (overlap-tile) for UNetSemSegHead's decoder; other heads then refuse it.
    cfg.MODEL.SEG2.UNET.SKIP_MODE = "pad"
    # Classic encoder: channels of the first level, doubled at each of DEPTH levels.
    cfg.MODEL.SEG2.UNET.BASE_CHANNELS = 64
    cfg.MODEL.SEG2.UNET.DEPTH = 5
    # Classic encoder's norm ("" = none); the heads' convs use MODEL.SEM_SEG_HEAD.NORM.
    cfg.MODEL.SEG2.UNET.NORM = "BN"

    # ---- DeconvNet head: mirrored encoder-decoder unpooling with the encoder's switches
    cfg.MODEL.SEG2.DECONVNET = CN()
    # Feature the head's own conv + max-pool encoder starts from (res1 on the classic one).
    cfg.MODEL.SEG2.DECONVNET.IN_FEATURE = "res5"
    # Stage widths, deepest first (one 2x2 pooling per entry); the decoder mirrors them.
    cfg.MODEL.SEG2.DECONVNET.CHANNELS = [256, 128, 64, 32]

    # ---- semantic losses: a weighted sum of names from {ce, weighted_ce, dice}
    cfg.MODEL.SEG2.LOSS = CN()
    cfg.MODEL.SEG2.LOSS.NAMES = ["ce"]
    cfg.MODEL.SEG2.LOSS.WEIGHTS = [1.0]
    # U-Net weight map w = w_c + W0 * exp(-(d1 + d2)^2 / (2 SIGMA^2)), SIGMA in pixels, the
    # weights of weighted_ce; the dataset mapper builds it (INPUT.SEG2.WEIGHT_MAP).
    cfg.MODEL.SEG2.LOSS.UNET_W0 = 10.0
    cfg.MODEL.SEG2.LOSS.UNET_SIGMA = 5.0
    # Smoothing added to the Dice numerator and denominator.
    cfg.MODEL.SEG2.LOSS.DICE_EPS = 1.0

    # ---- sliding-window baseline (SlidingWindowSegmentor): a small CNN classifies the centre
    # pixel of a WINDOW x WINDOW crop around every pixel (pre-FCN segmentation)
    cfg.MODEL.SEG2.SLIDING_WINDOW = CN()
    # Odd, so the window has a centre pixel; the image is mirror-padded by WINDOW // 2.
    cfg.MODEL.SEG2.SLIDING_WINDOW.WINDOW = 33
    # Random non-ignored pixels (windows) per image in a training step.
    cfg.MODEL.SEG2.SLIDING_WINDOW.PIXELS_PER_IMAGE = 128
    # Windows per forward pass in inference: bounds memory, not the result.
    cfg.MODEL.SEG2.SLIDING_WINDOW.BATCH = 1024
    # The CNN: one 3x3 conv + ReLU + 2x2 max-pool per entry, then FC_DIM hidden units.
    cfg.MODEL.SEG2.SLIDING_WINDOW.CONV_CHANNELS = [8, 16, 32]
    cfg.MODEL.SEG2.SLIDING_WINDOW.FC_DIM = 128
    # Norm of the convs ("" = none); GN trains from scratch with small batches.
    cfg.MODEL.SEG2.SLIDING_WINDOW.NORM = ""

    # ---- panoptic meta-architecture (Seg2PanopticRCNN)
    cfg.MODEL.SEG2.PANOPTIC = CN()
    cfg.MODEL.SEG2.PANOPTIC.INSTANCE_LOSS_WEIGHT = 1.0
    # The semantic loss weight is the core MODEL.SEM_SEG_HEAD.LOSS_WEIGHT.

    # ---- things/stuff fusion (registry in seg2/modeling/fusion.py)
    # ---- ROI heads: seg2's ROIAlign in Detectron2's poolers when training (Seg2Trainer).
    # Same forward as torchvision's; on CPU a separable, multi-threaded backward whose sums run
    # in a fixed order, so runs repeat at a given thread count (seg2/modeling/roi_align.py).
    # False keeps torchvision's single-threaded backward.
    cfg.MODEL.SEG2.FAST_ROI_ALIGN = True

    cfg.MODEL.SEG2.FUSION = CN()
    cfg.MODEL.SEG2.FUSION.NAME = "HeuristicFusion"
    cfg.MODEL.SEG2.FUSION.INSTANCES_SCORE_THRESH = 0.5
    # Fraction of an instance that may already be claimed before it is dropped.
    cfg.MODEL.SEG2.FUSION.OVERLAP_THRESH = 0.5
    # Stuff segments smaller than this many pixels become void.
    cfg.MODEL.SEG2.FUSION.STUFF_AREA_LIMIT = 64
    # ProbabilisticFusion only: its score floor is lower because the semantic branch
    # arbitrates weak instances; it mainly bounds the cost.
    cfg.MODEL.SEG2.FUSION.PROB_SCORE_THRESH = 0.1
    # ProbabilisticFusion only: weight of the semantic posterior in the per-pixel pool.
    cfg.MODEL.SEG2.FUSION.SEMANTIC_WEIGHT = 0.5

    # ---- data
    cfg.INPUT.SEG2 = CN()
    # Build U-Net's weight map (sem_seg_weights, read by the weighted_ce loss) in the dataset
    # mapper from the panoptic PNG's thing segments (needs pan_seg_file_name).
    cfg.INPUT.SEG2.WEIGHT_MAP = False
    # Semantic crops: most of a crop one class may cover before another crop is drawn
    # (1.0 = no limit); Detectron2's DeepLab recipe uses 0.75 on Cityscapes.
    cfg.INPUT.SEG2.CROP_SINGLE_CATEGORY_MAX_AREA = 1.0
    # ---- images with more than 8 bits per sample (16-bit aerial/microscopy tiles), which
    # Detectron2's reader would saturate to 255: how training, evaluation and prediction
    # scale them to 8 bits (seg2.io.BitDepthRule; the dataset check reports how many).
    cfg.INPUT.SEG2.BIT_DEPTH = CN()
    # "minmax" (per-image min-max stretch), "percentile" (per-image stretch between
    # PERCENTILES, clipped) or "divisor" (floor(v / DIVISOR), the same for every image).
    cfg.INPUT.SEG2.BIT_DEPTH.METHOD = "minmax"
    cfg.INPUT.SEG2.BIT_DEPTH.DIVISOR = 257.0
    cfg.INPUT.SEG2.BIT_DEPTH.PERCENTILES = [1.0, 99.0]

    cfg.DATASETS.SEG2 = CN()
    # Register your own data by path, no Python needed. Each entry is a list:
    #   COCO_INSTANCES: [name, instances_json, image_root]
    #   COCO_PANOPTIC:  [name, image_root, panoptic_root, panoptic_json, (instances_json)]
    #   SEMANTIC:       [name, image_root, label_root, class_names_csv]
    cfg.DATASETS.SEG2.COCO_INSTANCES = []
    cfg.DATASETS.SEG2.COCO_PANOPTIC = []
    cfg.DATASETS.SEG2.SEMANTIC = []
    # Cityscapes root; empty = $DETECTRON2_DATASETS/cityscapes (Detectron2's convention).
    cfg.DATASETS.SEG2.CITYSCAPES_ROOT = ""
    # Cityscapes instance masks from the *_gtFine_polygons.json files (then required for every
    # image; drawn as cityscapesscripts' json2instanceImg does) instead of *_instanceIds.png.
    cfg.DATASETS.SEG2.CITYSCAPES_POLYGONS = False
    # ---- validation (seg2.data.validate): every dataset is checked once before the first
    # iteration (ids, references, segmentations, boxes, image files, PNG<->JSON agreement).
    # What a broken sample does: "error" stops the run listing every problem found;
    # "skip" drops each broken image (logged with its reason, counted at the end).
    cfg.DATASETS.SEG2.ON_BAD_SAMPLE = "error"
    # Images are checked from their headers (existence, format, size against the JSON, mode,
    # EXIF orientation, a JPEG/PNG that ends early); True also decodes every image fully
    # (finds corrupt pixel data up front). Label and panoptic PNGs are always decoded. An
    # image the loader cannot decode later is handled by ON_BAD_SAMPLE (error or skip).
    cfg.DATASETS.SEG2.CHECK_FILES = False
    # Where validation results are kept between starts (keyed by the JSON's digest and each
    # file's path, size and time): "" = $XDG_CACHE_HOME/seg2/validation (~/.cache/...);
    # "none" keeps nothing.
    cfg.DATASETS.SEG2.VALIDATION_CACHE_DIR = ""

    cfg.TEST.SEG2 = CN()
    # Number of val images drawn as prediction overlays into OUTPUT_DIR/vis after evaluation.
    cfg.TEST.SEG2.NUM_VIS = 8
    # Also score boundary F (2 px) and touching-object separation of sem_seg outputs
    # (seg2/evaluation/boundary.py); off by default: distance transforms cost time per image.
    cfg.TEST.SEG2.BOUNDARY_EVAL = False

    # ---- tools/predict.py
    # Images per forward pass when predicting on files or video frames (--batch-size
    # overrides). Batched images are padded to the largest one, as in training.
    cfg.TEST.SEG2.PREDICT_BATCH_SIZE = 4
    return cfg
