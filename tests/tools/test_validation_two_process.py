"""Validation once per start with two (gloo) processes: the main process reads the files and
fills the validation cache while the other waits, then replays it (nothing read twice); a
broken dataset stops both with the same one-line error and exit status 2."""

import json
import os
import tempfile
import unittest

from seg2_testing import REPO_ROOT, run_tool, subprocess_env, tiny_synthetic_root

INSTANCE = os.path.join(
    REPO_ROOT, "configs", "Synthetic-InstanceSegmentation", "mask_rcnn_R_18_FPN_synthetic.yaml"
)


class TestValidationTwoProcesses(unittest.TestCase):
    def test_main_process_validates_the_other_replays(self):
        root = tiny_synthetic_root()
        tmp = tempfile.mkdtemp(prefix="seg2-val2-")
        data = json.load(open(f"{root}/annotations/instances_val.json"))
        bad = data["annotations"][0]
        bad["category_id"] = 99
        ann = os.path.join(tmp, "bad.json")
        json.dump(data, open(ann, "w"))
        out = os.path.join(tmp, "out")
        entry = f'[["bad_inst", "{ann}", "{root}/images/val"]]'
        p = run_tool(
            [
                "tools/train_net.py", "--num-gpus", "2", "--dist-url", "auto",
                "--config-file", INSTANCE, "OUTPUT_DIR", out,
                "DATASETS.SEG2.COCO_INSTANCES", entry, "DATASETS.TRAIN", '("bad_inst",)', "DATASETS.TEST", "()",
                "DATASETS.SEG2.VALIDATION_CACHE_DIR", os.path.join(tmp, "cache"),
                "MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
            ],
            env=subprocess_env(DETECTRON2_DATASETS=os.path.dirname(root)),
        )
        log = p.stdout + p.stderr
        self.assertEqual(p.returncode, 2, log[-3000:])
        self.assertNotIn("Traceback", log)
        for rank in (0, 1):
            self.assertRegex(
                log[-5000:],
                rf"\[rank {rank}\] error: dataset 'bad_inst'.*bad.json: annotation {bad['id']}: "
                "field 'category_id' = 99",
            )
        n = len({im["file_name"] for im in data["images"]})
        main = open(os.path.join(out, "log.txt")).read()
        other = open(os.path.join(out, "log.txt.rank1")).read()
        self.assertIn(f"bad_inst: {len(data['images'])} sample(s); JSON checked; files: {n} read, 0 unchanged", main)
        self.assertIn(f"bad_inst: {len(data['images'])} sample(s); JSON unchanged (cached); files: 0 read, {n} unchanged", other)


if __name__ == "__main__":
    unittest.main()
