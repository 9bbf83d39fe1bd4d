"""Startup: what it costs to get from a COCO-style instances file to the first training
batch, seg2 (registration, validation, resumable loader) against Detectron2's
``DefaultTrainer`` loader on the same files.

Data: ``N`` images (hard links to a few real 640x480 JPEGs, so every image is its own path
with a real header), ~7.4 polygons per image (many small objects, as in COCO), COCO's 80
non-contiguous category ids, 1% crowd annotations as uncompressed RLE. Each measurement
runs in a fresh process and reports CPU seconds (``getrusage``: all threads, and the forked
processes that check a JSON over the cores) and wall seconds from after the imports (and a
full garbage collection that settles them) to the first batch (on a shared machine wall
time measures the load too), and the resident memory it added once the loader was built.
seg2 runs twice on one cache folder: a first start (empty validation cache) and a later
start with unchanged data.

The mapper line compares ``Seg2DatasetMapper`` with Detectron2's ``DatasetMapper``, both with
bitmask masks and Detectron2's default augmentations, on the same images (CPU ms per image,
interleaved rounds, median).
"""

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Sequence

import numpy as np

from .process import cpu_s, peak_rss_mb, rss_mb

__all__ = ["generate_coco", "run_startup_benchmark", "format_startup_table", "file_costs"]

# COCO's 80 category ids (1..90 with gaps).
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
H, W = 480, 640
NAME = "bench_train"


def _polygon(rng, cx: float, cy: float, r: float) -> List[float]:
    k = int(rng.integers(8, 40))
    a = np.sort(rng.uniform(0, 2 * np.pi, k))
    rr = r * rng.uniform(0.5, 1.0, k)
    x = np.clip(cx + rr * np.cos(a), 0, W)
    y = np.clip(cy + rr * np.sin(a), 0, H)
    return np.round(np.stack([x, y], 1).ravel(), 2).tolist()


def _crowd_rle(rng) -> Dict:
    m = np.zeros((H, W), np.uint8)
    x0, y0 = int(rng.integers(0, W - 100)), int(rng.integers(0, H - 100))
    m[y0 : y0 + int(rng.integers(20, 100)), x0 : x0 + int(rng.integers(20, 100))] = 1
    flat = m.ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": [H, W], "counts": counts}


def generate_coco(out: str, num_images: int, seed: int = 0, base_images: int = 64) -> Dict:
    """Write ``out/images/*.jpg`` (hard links to ``base_images`` real JPEGs) and
    ``out/instances.json``; returns {"json", "images", "annotations"}."""
    import pycocotools.mask as mask_util
    from PIL import Image

    rng = np.random.default_rng(seed)
    img_dir = os.path.join(out, "images")
    base_dir = os.path.join(out, "base")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(base_dir, exist_ok=True)
    bases = []
    for k in range(base_images):
        small = rng.integers(0, 255, (H // 16, W // 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((W, H), Image.BILINEAR)
        path = os.path.join(base_dir, f"{k}.jpg")
        img.save(path, quality=90)
        bases.append(path)
    crowd_pool = [_crowd_rle(rng) for _ in range(16)]
    images, anns = [], []
    for i in range(num_images):
        name = f"{i:012d}.jpg"
        dst = os.path.join(img_dir, name)
        if not os.path.exists(dst):
            os.link(bases[i % base_images], dst)
        images.append({"id": i + 1, "file_name": name, "height": H, "width": W})
        for _ in range(int(rng.poisson(7.4))):
            cat = COCO_IDS[int(rng.integers(0, 80))]
            if rng.random() < 0.01:
                rle = crowd_pool[int(rng.integers(0, 16))]
                seg, area = rle, float(sum(rle["counts"][1::2]))
                ys = None
            else:
                r = float(np.clip(np.exp(rng.normal(np.log(25), 0.9)), 2, 200))
                seg = [_polygon(rng, rng.uniform(0, W), rng.uniform(0, H), r)]
                xs, ys = seg[0][0::2], seg[0][1::2]
                area = 0.5 * abs(
                    float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))
                )
            if ys is None:
                enc = mask_util.frPyObjects(seg, H, W)
                box = [float(v) for v in mask_util.toBbox(enc)]
            else:
                box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
                if box[2] <= 0 or box[3] <= 0:
                    continue
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": cat,
                    "segmentation": seg,
                    "area": round(area, 2),
                    "bbox": [round(v, 2) for v in box],
                    "iscrowd": int(ys is None),
                }
            )
    cats = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in COCO_IDS]
    path = os.path.join(out, "instances.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    return {"json": path, "images": img_dir, "annotations": len(anns)}


def _base_cfg(json_file: str, image_root: str, seg2: bool):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    if seg2:
        from seg2.config import add_seg2_config

        add_seg2_config(cfg)
    cfg.DATASETS.TRAIN = (NAME,)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def child(kind: str, json_file: str, image_root: str, cache_dir: str, check_files: bool) -> Dict:
    """One measurement (run in a fresh process): 'd2' or 'seg2'."""
    import torch

    torch.set_num_threads(1)
    import detectron2.data  # noqa: F401
    import pycocotools.mask  # noqa: F401
    from detectron2.engine import DefaultTrainer
    from PIL import Image

    Image.init()  # both read images: their modules count as imports, not as data

    if kind == "seg2":
        from seg2.data.datasets import register_from_config
        from seg2.data.validate import validate_datasets
        from seg2.engine.trainer import Seg2Trainer
    # The imports leave the garbage collector a debt of young objects that the next full
    # collection (~0.2 s here) pays; settled now, neither side is charged for its imports.
    gc.collect()
    rss0, cpu0, wall0 = rss_mb(), cpu_s(), time.perf_counter()
    if kind == "d2":
        from detectron2.data.datasets import register_coco_instances

        cfg = _base_cfg(json_file, image_root, seg2=False)
        register_coco_instances(NAME, {}, json_file, image_root)
        loader = DefaultTrainer.build_train_loader(cfg)
    else:
        cfg = _base_cfg(json_file, image_root, seg2=True)
        cfg.DATASETS.SEG2.COCO_INSTANCES = [[NAME, json_file, image_root]]
        cfg.DATASETS.SEG2.VALIDATION_CACHE_DIR = cache_dir
        cfg.DATASETS.SEG2.CHECK_FILES = check_files
        register_from_config(cfg)
        validate_datasets(cfg, cfg.DATASETS.TRAIN)
        loader = Seg2Trainer.build_train_loader(cfg)
    cpu_loader, rss_loader = cpu_s(), rss_mb()
    batch = next(iter(loader))
    cpu1, wall1 = cpu_s(), time.perf_counter()
    assert len(batch) == 2
    return {
        "cpu_s": cpu1 - cpu0,
        "wall_s": wall1 - wall0,
        "cpu_loader_s": cpu_loader - cpu0,
        "rss_mb": rss_loader - rss0,
        "peak_rss_mb": peak_rss_mb(),
    }


def mapper_child(json_file: str, image_root: str, images: int, rounds: int) -> Dict:
    """CPU ms per image of seg2's and Detectron2's mappers (bitmask), interleaved rounds."""
    import torch

    torch.set_num_threads(1)
    from detectron2.data import DatasetMapper
    from detectron2.data.datasets import load_coco_json

    from seg2.data.dataset_mapper import Seg2DatasetMapper

    cfg = _base_cfg(json_file, image_root, seg2=True)
    dicts = load_coco_json(json_file, image_root, NAME)[:images]
    mappers = {"d2": DatasetMapper(cfg, True), "seg2": Seg2DatasetMapper(cfg, True)}
    times: Dict[str, List[float]] = {k: [] for k in mappers}
    for r in range(rounds + 1):
        for k, m in mappers.items():
            np.random.seed(r)
            t = cpu_s()
            for d in dicts:
                m(d)
            if r:  # the first round warms up
                times[k].append((cpu_s() - t) * 1000 / len(dicts))
    out = {k: statistics.median(v) for k, v in times.items()}
    out["ratio"] = out["seg2"] / out["d2"]
    return out


def _run_child(code: str, timeout: int = 3600) -> Dict:
    tools = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    root = os.path.dirname(tools)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, tools, env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json; from benchmarks.startup import child, file_costs, mapper_child; "
            f"print('@@' + json.dumps({code}))",
        ],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("@@"):
            return json.loads(line[2:])
    raise RuntimeError(f"benchmark child failed:\n{proc.stderr[-3000:]}")


def run_startup_benchmark(
    out: str,
    sizes: Sequence[int],
    seed: int = 0,
    check_files: bool = False,
    mapper_images: int = 40,
    mapper_rounds: int = 5,
    cityscapes_files: bool = True,
    repeats: int = 1,
) -> Dict:
    """Each size: ``repeats`` interleaved rounds of Detectron2, seg2's first start (a new
    cache folder) and seg2's later start; the rows hold each measurement's median (a full
    garbage collection, ~0.2 s, falls inside a run or not: at 1k images that is most of the
    figure), ``runs`` every round."""
    rows = []
    for n in sizes:
        folder = os.path.join(out, f"coco_{n}")
        t = time.time()
        data = generate_coco(folder, n, seed)
        gen_s = time.time() - t
        runs = []
        for k in range(repeats):
            cache = os.path.join(folder, f"validation_cache_{k}")
            args = f"{data['json']!r}, {data['images']!r}, {cache!r}, {check_files!r}"
            runs.append(
                {
                    "d2": _run_child(f"child('d2', {args})"),
                    "seg2_first": _run_child(f"child('seg2', {args})"),
                    "seg2_later": _run_child(f"child('seg2', {args})"),
                }
            )
        row = {
            "images": n,
            "annotations": data["annotations"],
            "json_mb": os.path.getsize(data["json"]) / 2**20,
            "generate_s": gen_s,
            "repeats": repeats,
            "runs": runs,
        }
        for side in ("d2", "seg2_first", "seg2_later"):
            row[side] = {
                key: statistics.median(r[side][key] for r in runs) for key in runs[0][side]
            }
        rows.append(row)
        print(format_startup_table({"rows": rows[-1:]}), flush=True)
    result = {"rows": rows, "check_files": check_files, "machine": machine()}
    if mapper_images:
        folder = os.path.join(out, f"coco_{sizes[0]}")
        result["mapper"] = _run_child(
            f"mapper_child({os.path.join(folder, 'instances.json')!r}, "
            f"{os.path.join(folder, 'images')!r}, {mapper_images}, {mapper_rounds})"
        )
    if cityscapes_files:
        result["file_costs_ms"] = _run_child(f"file_costs({os.path.join(out, 'files')!r})")
    return result


def file_costs(out: str, repeats: int = 5) -> Dict:
    """CPU ms per file of what validation reads, at Cityscapes size (2048x1024 PNGs: an
    image, a uint8 label, a panoptic PNG with 60 segments), to project a Cityscapes start."""
    from PIL import Image

    from seg2.data.check_files import image_facts, label_facts, panoptic_facts
    from seg2.data.validate import ValidationOptions

    rng = np.random.default_rng(0)
    h, w = 1024, 2048
    os.makedirs(out, exist_ok=True)
    paths = {k: os.path.join(out, f"cs_{k}.png") for k in ("image", "label", "panoptic")}
    small = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
    Image.fromarray(small).resize((w, h), Image.BILINEAR).save(paths["image"])
    block = lambda a: np.repeat(np.repeat(a, 32, 0), 32, 1)  # noqa: E731
    Image.fromarray(block(rng.integers(0, 19, (h // 32, w // 32), dtype=np.uint8))).save(
        paths["label"]
    )
    ids = block(rng.integers(0, 60, (h // 32, w // 32))) * 1000 + 7
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    Image.fromarray(rgb).save(paths["panoptic"])
    reads = {
        "image header": lambda: image_facts(paths["image"], ValidationOptions(check_files=False)),
        "image decoded (CHECK_FILES True)": lambda: image_facts(
            paths["image"], ValidationOptions(check_files=True)
        ),
        "label PNG": lambda: label_facts(paths["label"]),
        "panoptic PNG": lambda: panoptic_facts(paths["panoptic"]),
    }
    result = {}
    for name, read in reads.items():
        read()
        t = cpu_s()
        for _ in range(repeats):
            read()
        result[name] = (cpu_s() - t) * 1000 / repeats
    return result


def machine() -> Dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "python": sys.version.split()[0]}


def format_startup_table(result: Dict) -> str:
    lines = [
        "| images | annotations | runs | Detectron2 CPU s | seg2 first start CPU s (x) "
        "| seg2 later start CPU s (x) | wall s: Detectron2 / seg2 first / later "
        "| Detectron2 RSS MB | seg2 RSS MB first / later (x) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        d2, a, b = r["d2"], r["seg2_first"], r["seg2_later"]
        lines.append(
            f"| {r['images']} | {r['annotations']} | {r.get('repeats', 1)} | {d2['cpu_s']:.2f} | "
            f"{a['cpu_s']:.2f} ({a['cpu_s'] / d2['cpu_s']:.2f}x) | "
            f"{b['cpu_s']:.2f} ({b['cpu_s'] / d2['cpu_s']:.2f}x) | "
            f"{d2['wall_s']:.2f} / {a['wall_s']:.2f} / {b['wall_s']:.2f} | {d2['rss_mb']:.0f} | "
            f"{a['rss_mb']:.0f} / {b['rss_mb']:.0f} "
            f"({max(a['rss_mb'], b['rss_mb']) / d2['rss_mb']:.2f}x) |"
        )
    if "mapper" in result:
        m = result["mapper"]
        lines.append("")
        lines.append(
            f"mapper (bitmask), CPU ms per image: Detectron2 {m['d2']:.1f}, seg2 {m['seg2']:.1f} "
            f"({m['ratio']:.2f}x)"
        )
    if "file_costs_ms" in result:
        costs = ", ".join(f"{k} {v:.1f}" for k, v in result["file_costs_ms"].items())
        lines.append(f"per 2048x1024 file, CPU ms: {costs}")
    return "\n".join(lines)
