"""tools/predict.py as a user runs it (a subprocess): its result files are scored by
tools/evaluate.py and pycocotools exactly as Seg2Trainer.test scores the same model on the
same images (both one image per forward pass, at the same thread count); batched prediction
agrees with one image at a time up to rounding; odd inputs (EXIF rotation, grayscale, RGBA, 16-bit, a corrupt file, a video)."""

import contextlib
import io
import json
import os
import tempfile
import unittest

import cv2
import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from PIL import Image

from seg2.data import register_synthetic
from seg2.engine import Seg2Trainer
from seg2.inference import BatchPredictor
from seg2.io import read_image
from seg2_testing import (
    REPO_ROOT,
    get_seg2_cfg,
    run_tool,
    subprocess_env,
    subprocess_threads,
    tiny_synthetic_root,
)

CFG = "configs/Synthetic-PanopticSegmentation/fcn8s_rcnn_R_18_FPN_synthetic.yaml"
OPTS = ["MODEL.DEVICE", "cpu"]
CHECKER = 4  # contiguous semantic id of "checker" (dataset id 21): 55% of val image 1


def predict(args, root):
    return run_tool(
        ["tools/predict.py", "--config-file", CFG, *args],
        env=subprocess_env(DETECTRON2_DATASETS=os.path.dirname(root)),
        timeout=300,
    )


class TestPredict(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = tiny_synthetic_root()
        cls.tmp = tempfile.mkdtemp(prefix="seg2-predict-")
        register_synthetic(cls.root, prefix="predtest")
        cfg = get_seg2_cfg(CFG.split("configs/")[1])
        cfg.merge_from_list(OPTS)
        cfg.DATASETS.TEST = ("predtest_val_panoptic",)
        cfg.OUTPUT_DIR = os.path.join(cls.tmp, "eval")
        torch.manual_seed(0)
        model = build_model(cfg)
        # Random weights, with the semantic branch saying "checker" and the detector's scores
        # held below the fusion's threshold: image 1 then gets a matched stuff segment, so PQ
        # is not 0 and a wrong category id in the written files would change it.
        with torch.no_grad():
            model.sem_seg_head.predictor.bias[CHECKER] += 5.0
            model.roi_heads.box_predictor.cls_score.bias[-1] += 2.0  # background
        cls.weights = os.path.join(cls.tmp, "model.pth")
        DetectionCheckpointer(model, save_dir=cls.tmp).save("model")
        model.eval()
        cls.cfg = cfg
        with subprocess_threads():  # as tools/predict.py runs below
            cls.reference = Seg2Trainer.test(cfg, model)["predtest_val_panoptic"]

    def test_results_score_like_the_evaluators(self):
        import evaluate as evaluate_tool  # tools/evaluate.py

        out = os.path.join(self.tmp, "val")
        ann = os.path.join(self.root, "annotations")
        proc = predict(
            [
                "--input",
                os.path.join(self.root, "images", "val"),
                "--output",
                out,
                "--batch-size",  # as the evaluators' loader: batches round differently
                "1",
                "--image-ids",
                os.path.join(ann, "instances_val.json"),
                "MODEL.WEIGHTS",
                self.weights,
                *OPTS,
            ],
            self.root,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        self.assertIn("img/s", proc.stderr)  # tqdm's rate
        stems = sorted(
            os.path.splitext(f)[0] for f in os.listdir(os.path.join(self.root, "images", "val"))
        )
        for sub, ext in (("vis", ".jpg"), ("sem_seg", ".png"), ("panoptic", ".png")):
            self.assertEqual(sorted(os.listdir(os.path.join(out, sub))), [s + ext for s in stems])

        scores = {}
        for cmd in (
            [
                "instances",
                "--gt-json",
                os.path.join(ann, "instances_val.json"),
                "--pred-json",
                os.path.join(out, "instances.json"),
                "--backend",
                "pycocotools",
            ],
            [
                "semantic",
                "--gt-dir",
                os.path.join(self.root, "semantic_val"),
                "--pred-dir",
                os.path.join(out, "sem_seg"),
                "--num-classes",
                "7",
                "--class-names",
                ",".join(MetadataCatalog.get("predtest_val_panoptic").stuff_classes),
            ],
            [
                "panoptic",
                "--gt-json",
                os.path.join(ann, "panoptic_val.json"),
                "--gt-dir",
                os.path.join(self.root, "panoptic_val"),
                "--pred-json",
                os.path.join(out, "panoptic.json"),
                "--pred-dir",
                os.path.join(out, "panoptic"),
                "--num-workers",
                "0",
            ],
        ):
            path = os.path.join(self.tmp, cmd[0] + ".json")
            with contextlib.redirect_stdout(io.StringIO()):
                self.assertEqual(evaluate_tool.main(cmd + ["--output", path]), 0)
            scores.update(json.load(open(path)))
        ref = self.reference
        self.assertGreater(ref["panoptic_seg"]["PQ_st"], 0)  # the comparison is not 0 == 0
        self.assertGreater(ref["sem_seg"]["mIoU"], 0)
        for task in ("bbox", "segm", "sem_seg", "panoptic_seg"):
            self.assertEqual(set(scores[task]), set(ref[task]), task)
            for k in ref[task]:
                np.testing.assert_allclose(
                    scores[task][k], ref[task][k], atol=1e-6, err_msg=f"{task}/{k}"
                )

        # the same detections as the evaluator wrote (dataset category ids, same image ids)
        ref_dets = json.load(
            open(
                os.path.join(
                    self.cfg.OUTPUT_DIR,
                    "inference",
                    "predtest_val_panoptic",
                    "coco_instances_results.json",
                )
            )
        )
        dets = json.load(open(os.path.join(out, "instances.json")))
        self.assertGreater(len(dets), 10)
        key = lambda r: (r["image_id"], -r["score"])  # noqa: E731
        for a, b in zip(sorted(dets, key=key), sorted(ref_dets, key=key), strict=True):
            self.assertEqual(
                (a["image_id"], a["category_id"], a["segmentation"]),
                (b["image_id"], b["category_id"], b["segmentation"]),
            )
            np.testing.assert_allclose(
                a["bbox"] + [a["score"]], b["bbox"] + [b["score"]], rtol=1e-5
            )

        # pycocotools directly on the file, no conversion
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(os.path.join(ann, "instances_val.json"))
            dt = gt.loadRes(os.path.join(out, "instances.json"))
            ev = COCOeval(gt, dt, "bbox")
            ev.evaluate(), ev.accumulate(), ev.summarize()
        self.assertAlmostEqual(100 * ev.stats[0], ref["bbox"]["AP"], places=6)

        # panoptic.json: COCO panoptic with the dataset's category ids and isthing
        pan = json.load(open(os.path.join(out, "panoptic.json")))
        gt_cats = {
            c["id"]: c["isthing"]
            for c in json.load(open(os.path.join(ann, "panoptic_val.json")))["categories"]
        }
        self.assertEqual({c["id"]: c["isthing"] for c in pan["categories"]}, gt_cats)
        segs = [s for a in pan["annotations"] for s in a["segments_info"]]
        self.assertTrue(segs and all(gt_cats[s["category_id"]] == s["isthing"] for s in segs))
        self.assertEqual({a["file_name"] for a in pan["annotations"]}, {s + ".png" for s in stems})
        images = json.load(open(os.path.join(out, "images.json")))["images"]
        self.assertEqual(
            {im["id"]: os.path.basename(im["file_name"]) for im in images},
            {i: f"{i:06d}.png" for i in range(4)},
        )

    def test_batched_like_one_at_a_time(self):
        """A batch of same-size images gives each image its own outputs up to rounding. The
        batched kernels sum in another order (float32, ~1e-6 relative): logits and scores
        agree to 1e-4, and a mask pixel can flip only where its probability lies that close to
        the 0.5 threshold, which is on the mask's boundary: a handful of pixels per mask."""
        cfg = self.cfg.clone()
        cfg.MODEL.WEIGHTS = self.weights
        predictor = BatchPredictor(cfg)
        val = os.path.join(self.root, "images", "val")
        images = [
            read_image(os.path.join(val, f), predictor.input_format)
            for f in sorted(os.listdir(val))[:3]
        ]
        self.assertEqual(len({im.shape for im in images}), 1)  # no extra padding in the batch
        with subprocess_threads():
            batched = predictor(images)
            single = [predictor([image])[0] for image in images]
        masks = 0
        for b, s in zip(batched, single, strict=True):
            np.testing.assert_allclose(b["sem_seg"].numpy(), s["sem_seg"].numpy(), atol=1e-4)
            bi, si = b["instances"], s["instances"]
            self.assertEqual(bi.pred_classes.tolist(), si.pred_classes.tolist())
            np.testing.assert_allclose(bi.scores.numpy(), si.scores.numpy(), atol=1e-4)
            np.testing.assert_allclose(
                bi.pred_boxes.tensor.numpy(), si.pred_boxes.tensor.numpy(), atol=1e-3
            )
            m = si.pred_masks
            flipped = bi.pred_masks != m
            self.assertLessEqual(int(flipped.sum()), 5 * len(si))
            p = torch.nn.functional.pad(m[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0]
            h, w = m.shape[1:]
            boundary = torch.zeros_like(m)
            for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
                boundary |= p[:, dy : dy + h, dx : dx + w].bool() != m
            self.assertFalse(bool((flipped & ~boundary).any()), "a flip inside a mask")
            masks += int(m.any(dim=(1, 2)).sum())
        self.assertGreater(masks, 0)  # some masks to compare

    def test_outputs_at_the_input_size_when_resized(self):
        # A 100x130 image is resized to 128x166 for the model (INPUT.MIN_SIZE_TEST 128) and
        # padded to 128x192 (FPN's size divisibility). The written results must come back at
        # 100x130 and equal a reference made here from the model's raw outputs on the resized
        # image and Detectron2's own postprocessing (sem_seg_postprocess: crop the padding,
        # bilinear to the original size; detector_postprocess: scale the boxes, paste the
        # masks at the original size).
        from detectron2.data import transforms as T
        from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
        from pycocotools import mask as mask_util

        src = os.path.join(self.tmp, "resized_in")
        os.makedirs(src)
        scene = Image.open(os.path.join(self.root, "images", "val", "000001.png"))
        scene.convert("RGB").resize((130, 100), Image.BILINEAR).save(os.path.join(src, "scene.png"))
        # Random score convs (FCN starts them at zero, a constant map): the semantic map
        # then varies across the image, so a misplaced resize changes its values.
        torch.manual_seed(1)
        model = build_model(self.cfg)
        head = model.sem_seg_head
        with torch.no_grad():
            for conv in [head.predictor, *head.skip_scores]:
                conv.weight.normal_(0, 0.05)
                conv.bias.normal_(0, 0.5)
        save_dir = os.path.join(self.tmp, "spatial")
        os.makedirs(save_dir)
        DetectionCheckpointer(model, save_dir=save_dir).save("model")
        out = os.path.join(self.tmp, "resized_out")
        proc = predict(
            [
                "--input",
                src,
                "--output",
                out,
                "--batch-size",
                "1",
                "MODEL.WEIGHTS",
                os.path.join(save_dir, "model.pth"),
                *OPTS,
            ],
            self.root,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])

        # The reference: same thread count and batch size as the subprocess (then exact).
        with subprocess_threads():
            model.eval()
            bgr = cv2.imread(os.path.join(src, "scene.png"))  # INPUT.FORMAT BGR
            resized = T.ResizeShortestEdge(128, 256, "choice").get_transform(bgr).apply_image(bgr)
            self.assertEqual(resized.shape[:2], (128, 166))
            image = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
            with torch.no_grad():
                dets, sem = model.inference([{"image": image}], do_postprocess=False)
            labels = sem_seg_postprocess(sem[0], (128, 166), 100, 130).argmax(0).numpy()
            insts = detector_postprocess(dets[0], 100, 130)
        self.assertGreater(len(np.unique(labels)), 1)  # not a constant map

        written = np.asarray(Image.open(os.path.join(out, "sem_seg", "scene.png")))
        self.assertEqual(written.shape, (100, 130))
        np.testing.assert_array_equal(written, labels)
        pan = np.asarray(Image.open(os.path.join(out, "panoptic", "scene.png")))
        self.assertEqual(pan.shape, (100, 130, 3))

        results = sorted(
            json.load(open(os.path.join(out, "instances.json"))), key=lambda r: -r["score"]
        )
        order = torch.argsort(insts.scores, descending=True, stable=True).tolist()
        self.assertGreater(len(order), 0)
        self.assertEqual(len(results), len(order))
        boxes = insts.pred_boxes.tensor.numpy()
        for r, i in zip(results, order):
            self.assertEqual(r["segmentation"]["size"], [100, 130])
            np.testing.assert_allclose(r["score"], float(insts.scores[i]), rtol=1e-6)
            x0, y0, x1, y1 = boxes[i]
            np.testing.assert_allclose(r["bbox"], [x0, y0, x1 - x0, y1 - y0], rtol=1e-5, atol=1e-4)
            np.testing.assert_array_equal(
                mask_util.decode(r["segmentation"]).astype(bool), insts.pred_masks[i].numpy()
            )

    def test_odd_inputs_and_video(self):
        src = os.path.join(self.tmp, "odd")
        os.makedirs(os.path.join(src, "sub"))
        rng = np.random.default_rng(0)
        rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)  # stored W=64, H=48
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
        Image.fromarray(rgb).save(os.path.join(src, "rotated.jpg"), exif=exif)
        Image.fromarray(rgb[..., 0]).save(os.path.join(src, "gray.png"))
        Image.fromarray(np.dstack([rgb, np.full((48, 64), 255, np.uint8)])).save(
            os.path.join(src, "sub", "rgba.png")
        )
        Image.fromarray((rng.integers(70, 1200, (40, 50))).astype(np.uint16)).save(
            os.path.join(src, "deep.png")
        )
        with open(os.path.join(src, "broken.png"), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
        video = os.path.join(self.tmp, "clip.avi")
        writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 5, (80, 60))
        for i in range(5):
            writer.write(np.full((60, 80, 3), 40 * i, np.uint8))
        writer.release()

        out = os.path.join(self.tmp, "odd_out")
        proc = predict(
            [
                "--input",
                src,
                os.path.join(self.tmp, "nothing*.png"),
                "--output",
                out,
                "--video-input",
                video,
                "MODEL.WEIGHTS",
                self.weights,
                *OPTS,
            ],
            self.root,
        )
        log = proc.stdout + proc.stderr
        self.assertEqual(proc.returncode, 1, log[-3000:])  # broken file and empty glob
        self.assertNotIn("Traceback", log)
        self.assertIn("4 image(s) predicted, 2 skipped", log)
        self.assertIn(f"skipped {os.path.join(src, 'broken.png')}", log)
        for note in (  # seg2.io.load_image's notes, each counted in the summary
            "1 x EXIF orientation 6 applied",
            "1 x grayscale (L) image replicated to 3 channels",
            "1 x RGBA image converted to RGB, alpha dropped",
            "1 x uint16 single-band image scaled to 8 bits by per-image min-max stretch",
        ):
            self.assertIn(note, log)
        # results at the upright size: EXIF-rotated 64x48 -> 64 rows, 48 columns
        expected = {"rotated": (64, 48), "gray": (48, 64), "rgba": (48, 64), "deep": (40, 50)}
        for stem, shape in expected.items():
            self.assertEqual(
                np.asarray(Image.open(os.path.join(out, "sem_seg", stem + ".png"))).shape, shape
            )
            self.assertEqual(
                np.asarray(Image.open(os.path.join(out, "panoptic", stem + ".png"))).shape[:2],
                shape,
            )
        sizes = {
            os.path.basename(im["file_name"]): (im["height"], im["width"])
            for im in json.load(open(os.path.join(out, "images.json")))["images"]
        }
        self.assertEqual(sizes["rotated.jpg"], (64, 48))
        for r in json.load(open(os.path.join(out, "instances.json"))):
            h, w = r["segmentation"]["size"]
            self.assertIn((h, w), set(expected.values()))
        self.assertFalse(os.path.exists(os.path.join(out, "vis", "broken.jpg")))
        # the annotated video: same frame count and size, readable by OpenCV
        cap = cv2.VideoCapture(os.path.join(out, "clip.mp4"))
        frames = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame.shape)
        self.assertEqual(frames, [(60, 80, 3)] * 5)

    def test_bad_arguments_one_line(self):
        import predict as predict_tool  # tools/predict.py, in this process (imports are slow)

        for argv, message in (
            (["--input", os.path.join(self.tmp, "nope", "*.jpg")], "no image files found"),
            (
                ["--input", self.root, "MODEL.WEIGHTS", os.path.join(self.tmp, "missing.pth")],
                "missing.pth: file not found",
            ),
        ):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = predict_tool.main(
                    ["--config-file", str(REPO_ROOT / CFG), "--output", self.tmp, *argv, *OPTS]
                )
            self.assertEqual(code, 2)
            self.assertEqual(err.getvalue().count("\n"), 1, err.getvalue())
            self.assertTrue(err.getvalue().startswith("error: "), err.getvalue())
            self.assertIn(message, err.getvalue())


class TestInputs(unittest.TestCase):
    """Input listing, output names and image ids (no model)."""

    def test_folders_globs_stems_and_ids(self):
        from seg2.inference import assign_image_ids, expand_inputs, unique_stems
        from seg2.io import InputError

        tmp = tempfile.mkdtemp(prefix="seg2-inputs-")
        for rel in ("a/x.jpg", "a/notes.txt", "b/x.png", "b/c/y.png", "z.bmp"):
            os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
            open(os.path.join(tmp, rel), "w").close()
        paths, missing = expand_inputs(
            [
                os.path.join(tmp, "a"),
                os.path.join(tmp, "b", "**", "*.png"),
                os.path.join(tmp, "a", "x.jpg"),
                os.path.join(tmp, "none*.png"),
            ]
        )
        rel = [os.path.relpath(p, tmp) for p in paths]
        self.assertEqual(rel, ["a/x.jpg", "b/c/y.png", "b/x.png"])  # once each, no .txt
        self.assertEqual(missing, [os.path.join(tmp, "none*.png")])
        self.assertEqual(unique_stems(paths), ["x", "y", "x_2"])
        gt = os.path.join(tmp, "gt.json")
        json.dump(
            {"images": [{"id": 7, "file_name": "sub/x.jpg"}, {"id": 9, "file_name": "y.png"}]},
            open(gt, "w"),
        )
        self.assertEqual(assign_image_ids(paths), [1, 2, 3])
        self.assertEqual(assign_image_ids(paths, gt), [7, 9, 10])  # b/x.png is not in gt.json
        with self.assertRaisesRegex(InputError, "no image files found"):
            expand_inputs([os.path.join(tmp, "nothing", "*")])
