"""seg2's models against Detectron2's stock ones at the same backbone and input size: speed,
memory, FLOPs and how close each gets to the machine's arithmetic peak, in one run.

Variants (:data:`VARIANTS`): seg2's ``Seg2PanopticRCNN`` with each semantic branch (FCN-8s,
U-Net, DeconvNet), seg2's Mask R-CNN (Detectron2's ``GeneralizedRCNN`` fed by
``Seg2DatasetMapper``), each built as ``Seg2Trainer`` builds it (seg2's ROIAlign backward
unless ``MODEL.SEG2.FAST_ROI_ALIGN False``), and Detectron2's stock ``PanopticFPN`` and
``GeneralizedRCNN`` built by ``build_model`` and fed by Detectron2's own ``DatasetMapper``,
all from the synthetic configs (ResNet-18-FPN, GroupNorm,
128 px). The machine is shared more often than not, so every figure is a median over
*interleaved* repetitions: each round runs one step of every variant in turn, starting
from a different variant each round (and one matmul and one convolution for the peak), and
every variant sees the images in the same order, so a burst of load hits all of them alike and
the ratios stay meaningful even when the absolute times do not.

Columns (one row per variant):

* ``train s/iter``: median of forward + backward + SGD step on pre-loaded batches of
  ``ims_per_batch`` images (data loading excluded; it is ``data s/batch``, the median time
  of the variant's mapper + collation for one batch in this process).
* ``ms/img b1`` / ``ms/img bN``: median inference time per image at batch 1 and at batch N
  (full post-processing, fusion included).
* ``fusion %``: share of batch-1 inference spent in the panoptic fusion call
  (seg2's ``model.fusion``, Detectron2's ``combine_semantic_and_instance_outputs``).
* ``GFLOP/img``: FLOPs of one batch-1 inference, 2 x the multiply-adds counted by
  Detectron2's :class:`~detectron2.utils.analysis.FlopCountAnalysis` (fvcore's counter; it
  counts convolutions, matmuls, ROIAlign, interpolation, not element-wise ops).
* ``GFLOP/s``: that count over the batch-1 time; ``% mm`` / ``% conv`` are its share of
  the peaks measured in the same run: the best 2048x2048 fp32 matmul and the best
  3x3 64->64-channel convolution (64x64 map, batch 8) over the rounds.
* ``peak MB``: on CUDA ``max_memory_allocated``; on CPU the growth of the peak resident
  set (``ru_maxrss``) of a forked child that builds the model and runs one training step
  and one batched inference, so each variant is measured alone.
"""

import logging
import multiprocessing as mp
import os
import platform
import statistics
import time
from collections import OrderedDict
from contextlib import ExitStack
from typing import Callable, Dict, List, Optional, Sequence
from unittest import mock

import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from .process import peak_rss_mb, rss_mb

__all__ = [
    "VARIANTS",
    "count_flops",
    "measure_peaks",
    "model_cfg",
    "run_models_benchmark",
    "format_models_table",
]

logger = logging.getLogger(__name__)

_PAN = "Synthetic-PanopticSegmentation/"
_FCN8S = _PAN + "fcn8s_rcnn_R_18_FPN_synthetic.yaml"
# name -> (config under configs/, overrides when that file is absent (falls back to the FCN-8s
# panoptic config), "seg2" or "d2" data pipeline)
VARIANTS: "OrderedDict[str, tuple]" = OrderedDict(
    [
        ("seg2_panoptic_fcn8s", (_FCN8S, (), "seg2")),
        (
            "seg2_panoptic_unet",
            (
                _PAN + "unet_rcnn_R_18_FPN_synthetic.yaml",
                (
                    "MODEL.SEM_SEG_HEAD.NAME", "UNetSemSegHead",
                    "MODEL.SEM_SEG_HEAD.NORM", "GN",
                    "MODEL.SEG2.UNET.IN_FEATURES", "['p5','p4','p3','p2']",
                    "MODEL.SEG2.UNET.DECODER_CHANNELS", "[64,64,64,32]",
                    "MODEL.SEG2.UNET.SKIP_MODE", "pad",
                    "MODEL.SEG2.UPSAMPLE.NAME", "transposed",
                ),
                "seg2",
            ),
        ),
        (
            "seg2_panoptic_deconvnet",
            (
                _PAN + "deconvnet_rcnn_R_18_FPN_synthetic.yaml",
                (
                    "MODEL.SEM_SEG_HEAD.NAME", "DeconvNetSemSegHead",
                    "MODEL.SEM_SEG_HEAD.NORM", "GN",
                    "MODEL.SEG2.DECONVNET.IN_FEATURE", "p3",
                    "MODEL.SEG2.DECONVNET.CHANNELS", "[128,64,64]",
                ),
                "seg2",
            ),
        ),
        ("d2_panoptic_fpn", (_PAN + "panoptic_fpn_R_18_FPN_synthetic.yaml", (), "d2")),
        (
            "seg2_mask_rcnn",
            ("Synthetic-InstanceSegmentation/mask_rcnn_R_18_FPN_synthetic.yaml", (), "seg2"),
        ),
        (
            "d2_mask_rcnn",
            ("Synthetic-InstanceSegmentation/mask_rcnn_R_18_FPN_synthetic.yaml", (), "d2"),
        ),
    ]
)


# ----------------------------------------------------------------------------- machine peak


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


class _Peaks:
    """The machine's fp32 peak as two kernels reach it: a square matmul and a 3x3 conv."""

    def __init__(self, device: str, matmul_n: int = 2048, conv_hw: int = 64):
        self.device = device
        self.a = torch.randn(matmul_n, matmul_n, device=device)
        self.b = torch.randn(matmul_n, matmul_n, device=device)
        self.mm_flops = 2.0 * matmul_n**3
        self.conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(device).eval()
        self.x = torch.randn(8, 64, conv_hw, conv_hw, device=device)
        self.conv_flops = 2.0 * 8 * 64 * 64 * 9 * conv_hw * conv_hw
        self.mm: List[float] = []
        self.cv: List[float] = []

    def round(self) -> None:
        with torch.no_grad():
            self.mm.append(self.mm_flops / _timed(lambda: self.a @ self.b, self.device) / 1e9)
            self.cv.append(self.conv_flops / _timed(lambda: self.conv(self.x), self.device) / 1e9)

    def result(self) -> Dict[str, float]:
        return {"matmul_gflops": max(self.mm), "conv_gflops": max(self.cv)}


def measure_peaks(device: str = "cpu", rounds: int = 3, matmul_n: int = 2048) -> Dict[str, float]:
    """
    Best-of-``rounds`` GFLOP/s of an ``matmul_n``-square fp32 matmul and of a 3x3
    64->64-channel convolution (batch 8, 64x64).

    Returns:
        {"matmul_gflops": float, "conv_gflops": float}
    """
    peaks = _Peaks(device, matmul_n)
    for _ in range(rounds + 1):  # the first round warms up
        peaks.round()
    peaks.mm, peaks.cv = peaks.mm[1:], peaks.cv[1:]
    return peaks.result()


# ----------------------------------------------------------------------------- FLOPs


def count_flops(model: torch.nn.Module, inputs) -> float:
    """
    FLOPs of one call ``model(inputs)``: 2 x the multiply-adds that Detectron2's
    :class:`~detectron2.utils.analysis.FlopCountAnalysis` (fvcore) counts, so that the
    figure compares with a matmul's 2*n^3.

    Args:
        model: any module; Detectron2 models take their list of dicts.
        inputs: what the model is called with (a tensor or a list of dicts).
    """
    from detectron2.utils.analysis import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, inputs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    with torch.no_grad():
        return 2.0 * analysis.total()


# ----------------------------------------------------------------------------- variants


def model_cfg(
    variant: str,
    data_prefix: str = "synthetic",
    ims_per_batch: Optional[int] = None,
    seed: int = 0,
    opts: Sequence = (),
) -> CfgNode:
    """
    The variant's config: its file (or the FCN-8s panoptic config plus the variant's
    overrides while that file does not exist), data names with ``data_prefix``, no loader
    workers, then ``opts``.
    """
    from .common import REPO_ROOT, get_seg2_cfg

    if variant not in VARIANTS:
        raise KeyError(f"unknown model variant {variant!r}; choose from {list(VARIANTS)}")
    path, fallback, _ = VARIANTS[variant]
    if (REPO_ROOT / "configs" / path).is_file():
        cfg = get_seg2_cfg(path)
    else:
        cfg = get_seg2_cfg(_FCN8S)
        cfg.merge_from_list(list(fallback))
    cfg.DATASETS.TRAIN = tuple(n.replace("synthetic", data_prefix, 1) for n in cfg.DATASETS.TRAIN)
    cfg.DATASETS.TEST = tuple(n.replace("synthetic", data_prefix, 1) for n in cfg.DATASETS.TEST)
    cfg.DATALOADER.NUM_WORKERS = 0
    if ims_per_batch:
        cfg.SOLVER.IMS_PER_BATCH = ims_per_batch
    cfg.SEED = seed
    cfg.merge_from_list(list(opts))
    cfg.freeze()
    return cfg


def _build_model(cfg: CfgNode, pipeline: str):
    """seg2's variants are built as ``tools/train_net.py`` trains them (``Seg2Trainer``:
    seg2's ROIAlign when ``MODEL.SEG2.FAST_ROI_ALIGN``); Detectron2's by ``build_model``."""
    if pipeline == "seg2":
        from seg2.engine.trainer import Seg2Trainer

        return Seg2Trainer.build_model(cfg)
    return build_model(cfg)


def _loaders(cfg: CfgNode, pipeline: str):
    """Train and test loaders through seg2's mapper or Detectron2's default one."""
    if pipeline == "seg2":
        from seg2.engine.trainer import Seg2Trainer

        return Seg2Trainer.build_train_loader(cfg), Seg2Trainer.build_test_loader(
            cfg, cfg.DATASETS.TEST[0]
        )
    return build_detection_train_loader(cfg), build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])


class _FusionClock:
    """Accumulates the wall time of the model's fusion calls."""

    def __init__(self, fn: Callable, device: str):
        self.fn, self.device, self.seconds = fn, device, 0.0

    def __call__(self, *args, **kwargs):
        _sync(self.device)
        t0 = time.perf_counter()
        out = self.fn(*args, **kwargs)
        _sync(self.device)
        self.seconds += time.perf_counter() - t0
        return out

    def __getattr__(self, name):  # e.g. ``uses_soft_masks``
        return getattr(self.fn, name)


class _Runner:
    """One variant: model, optimizer, pre-loaded train batches and test images."""

    def __init__(self, variant, cfg, pipeline, num_batches, batch_test, seed):
        self.variant, self.cfg, self.device = variant, cfg, cfg.MODEL.DEVICE
        seed_all_rng(seed)
        self.model = _build_model(cfg, pipeline)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=0.9)
        seed_all_rng(seed)  # the same sampler order for every variant
        train_loader, test_loader = _loaders(cfg, pipeline)
        it = iter(train_loader)
        self.data_times = []
        self.batches = []
        for _ in range(num_batches):
            t0 = time.perf_counter()
            self.batches.append(next(it))
            self.data_times.append(time.perf_counter() - t0)
        self.test_images = []
        for inputs in test_loader:
            self.test_images.extend(inputs)
            if len(self.test_images) >= max(batch_test, 1):
                break
        self.batch_test = batch_test
        self.fusion = None
        if hasattr(self.model, "fusion"):  # seg2: the fusion is a public, swappable attribute
            self.fusion = self.model.fusion = _FusionClock(self.model.fusion, self.device)
        elif pipeline == "d2" and hasattr(self.model, "sem_seg_head"):
            import detectron2.modeling.meta_arch.panoptic_fpn as pfpn

            self.fusion = _FusionClock(pfpn.combine_semantic_and_instance_outputs, self.device)
            self._patch = mock.patch.object(
                pfpn, "combine_semantic_and_instance_outputs", self.fusion
            )
        self.train_times: List[float] = []
        self.b1_times: List[float] = []
        self.bn_times: List[float] = []
        self.fusion_times: List[float] = []
        self.step = 0

    def train_step(self) -> None:
        self.model.train()
        batch = self.batches[self.step % len(self.batches)]
        self.step += 1

        def run():
            with EventStorage(self.step):
                losses = self.model(batch)
            loss = sum(losses.values())
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()

        self.train_times.append(_timed(run, self.device))

    def _infer(self, inputs):
        self.model.eval()
        with torch.no_grad(), ExitStack() as stack:
            if hasattr(self, "_patch"):
                stack.enter_context(self._patch)
            return self.model(inputs)

    def infer_b1(self, index: int) -> None:
        image = self.test_images[index % len(self.test_images)]
        before = self.fusion.seconds if self.fusion else 0.0
        self.b1_times.append(_timed(lambda: self._infer([image]), self.device))
        if self.fusion:
            self.fusion_times.append(self.fusion.seconds - before)

    def infer_batched(self) -> None:
        inputs = self.test_images[: self.batch_test]
        self.bn_times.append(_timed(lambda: self._infer(inputs), self.device) / len(inputs))

    def flops(self) -> float:
        self.model.eval()
        with ExitStack() as stack:
            if hasattr(self, "_patch"):
                stack.enter_context(self._patch)
            return count_flops(self.model, [self.test_images[0]])


def _median(xs: List[float], skip: int = 1) -> float:
    xs = xs[skip:] if len(xs) > skip else xs
    return statistics.median(xs) if xs else float("nan")


def _peak_memory_child(variant, cfg, pipeline, batch_test, seed, queue) -> None:
    """Forked child: build one variant, one training step, one batched inference."""
    try:
        start = rss_mb()
        if cfg.MODEL.DEVICE.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        runner = _Runner(variant, cfg, pipeline, 1, batch_test, seed)
        runner.train_step()
        runner.infer_batched()
        if cfg.MODEL.DEVICE.startswith("cuda"):
            queue.put(torch.cuda.max_memory_allocated() / 2**20)
        else:
            queue.put(peak_rss_mb() - start)
    except BaseException as e:  # the parent reports it
        queue.put(f"{type(e).__name__}: {e}")


def _peak_memory(variant, cfg, pipeline, batch_test, seed) -> float:
    if cfg.MODEL.DEVICE.startswith("cuda") or not hasattr(os, "fork"):
        # CUDA cannot be re-initialised in a forked child; measure in this process.
        torch.cuda.reset_peak_memory_stats()
        runner = _Runner(variant, cfg, pipeline, 1, batch_test, seed)
        runner.train_step()
        runner.infer_batched()
        return torch.cuda.max_memory_allocated() / 2**20
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(
        target=_peak_memory_child, args=(variant, cfg, pipeline, batch_test, seed, queue)
    )
    proc.start()
    try:
        result = queue.get(timeout=900)
    except Exception:  # queue.Empty: a child that hangs must not hang the benchmark
        proc.kill()
        result = "no result from the forked child within 900 s"
    proc.join()
    if isinstance(result, str):
        raise RuntimeError(f"peak memory of {variant!r}: {result}")
    return result


# ----------------------------------------------------------------------------- the benchmark


def run_models_benchmark(
    variants: Optional[Sequence[str]] = None,
    *,
    repeats: int = 10,
    ims_per_batch: int = 8,
    batch_test: int = 4,
    data_prefix: str = "synthetic",
    seed: int = 0,
    memory: bool = True,
    matmul_n: int = 2048,
    threads: Optional[int] = None,
    opts: Sequence = (),
) -> Dict:
    """
    Measure every variant in this process, interleaved (see the module docstring).

    Args:
        variants: keys of :data:`VARIANTS` (default all).
        repeats: rounds; each runs one training step, one batch-1 inference and one batched
            inference of every variant, plus one matmul and one convolution. The first
            round is warm-up and not counted.
        ims_per_batch: training batch size.
        batch_test: images per batched inference call.
        data_prefix: registered synthetic split prefix (``synthetic`` = ``datasets/synthetic``).
        seed: seeds every model's initial weights alike.
        memory: measure peak memory (one forked child per variant on CPU).
        matmul_n: side of the peak matmul.
        threads: ``torch.set_num_threads`` (default: leave it). On a shared CPU one thread
            per process avoids OpenMP barrier stalls that inflate 2-thread times many-fold.
        opts: ``KEY VALUE`` overrides for every variant.

    Returns:
        {"machine": {...}, "peaks": {...}, "rows": [one dict per variant]}
    """
    variants = list(variants or VARIANTS)
    if threads:
        torch.set_num_threads(threads)
    cfgs = {v: model_cfg(v, data_prefix, ims_per_batch, seed, opts) for v in variants}
    device = cfgs[variants[0]].MODEL.DEVICE
    peak_mb = {}
    if memory:
        for v in variants:
            peak_mb[v] = _peak_memory(v, cfgs[v], VARIANTS[v][2], batch_test, seed)
    runners = {
        v: _Runner(v, cfgs[v], VARIANTS[v][2], min(repeats, 4), batch_test, seed) for v in variants
    }
    peaks = _Peaks(device, matmul_n)
    for r in range(repeats + 1):
        peaks.round()
        order = variants[r % len(variants) :] + variants[: r % len(variants)]  # no fixed slot
        for v in order:
            runners[v].train_step()
        for v in order:
            runners[v].infer_b1(r)
        for v in order:
            runners[v].infer_batched()
    peaks.mm, peaks.cv = peaks.mm[1:], peaks.cv[1:]
    peak = peaks.result()

    rows = []
    for v in variants:
        run = runners[v]
        b1 = _median(run.b1_times)
        flops = run.flops()
        gflops = flops / b1 / 1e9
        fusion = (
            100.0 * _median([f / t for f, t in zip(run.fusion_times, run.b1_times)])
            if run.fusion_times
            else None
        )
        rows.append(
            OrderedDict(
                variant=v,
                config=VARIANTS[v][0],
                meta_architecture=run.cfg.MODEL.META_ARCHITECTURE,
                sem_seg_head=run.cfg.MODEL.SEM_SEG_HEAD.NAME
                if hasattr(run.model, "sem_seg_head")
                else None,
                data_pipeline=VARIANTS[v][2],
                train_s_per_iter=_median(run.train_times),
                data_s_per_batch=_median(run.data_times, skip=0),
                ms_per_image_b1=1000 * b1,
                ms_per_image_batched=1000 * _median(run.bn_times),
                fusion_pct=fusion,
                gflop_per_image=flops / 1e9,
                gflops=gflops,
                pct_matmul_peak=100 * gflops / peak["matmul_gflops"],
                pct_conv_peak=100 * gflops / peak["conv_gflops"],
                peak_mb=peak_mb.get(v),
                params_m=sum(p.numel() for p in run.model.parameters()) / 1e6,
            )
        )
    machine = {
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "ims_per_batch": ims_per_batch,
        "batch_test": batch_test,
        "repeats": repeats,
        "input": f"{cfgs[variants[0]].INPUT.MIN_SIZE_TEST} px short side",
    }
    if device.startswith("cuda"):
        machine["gpu"] = torch.cuda.get_device_name()
    return {"machine": machine, "peaks": peak, "rows": rows}


def _fmt(x, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_models_table(result: Dict) -> str:
    """Markdown table of :func:`run_models_benchmark`'s result, with the machine and peaks."""
    m, p = result["machine"], result["peaks"]
    head = (
        f"Machine: {m['device']} ({m['cpu']}, {m['cpus']} CPUs, {m['torch_threads']} torch "
        f"threads, load {_fmt(m['load_avg_1m'], 1)}), torch {m['torch']}; peak fp32: matmul "
        f"{p['matmul_gflops']:.0f} GFLOP/s, 3x3 conv {p['conv_gflops']:.0f} GFLOP/s; "
        f"train batch {m['ims_per_batch']}, inference batch 1 and {m['batch_test']}, "
        f"{m['input']}, median of {m['repeats']} interleaved rounds.\n\n"
    )
    cols = [
        ("variant", "variant", None),
        ("train s/iter", "train_s_per_iter", 3),
        ("data s/batch", "data_s_per_batch", 3),
        ("ms/img b1", "ms_per_image_b1", 1),
        (f"ms/img b{m['batch_test']}", "ms_per_image_batched", 1),
        ("fusion %", "fusion_pct", 1),
        ("GFLOP/img", "gflop_per_image", 2),
        ("GFLOP/s", "gflops", 1),
        ("% mm peak", "pct_matmul_peak", 1),
        ("% conv peak", "pct_conv_peak", 1),
        ("peak MB", "peak_mb", 0),
        ("params (M)", "params_m", 2),
    ]
    lines = [
        "| " + " | ".join(c[0] for c in cols) + " |",
        "|" + "|".join(":---" if c[2] is None else "---:" for c in cols) + "|",
    ]
    for row in result["rows"]:
        cells = [row[k] if d is None else _fmt(row[k], d) for _, k, d in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines)
