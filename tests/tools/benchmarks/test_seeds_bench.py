"""Seeds benchmark: the figures read from each run's eval_results.json, their mean and range
(worked by hand), and the table's rows."""

import json
import os
import tempfile
import unittest
from unittest import mock

from benchmarks import seeds


def results(box, pq):
    return {"synthetic_val_panoptic": {
        "bbox": {"AP": box}, "segm": {"AP": box - 1, "AP50": 60.0},
        "sem_seg": {"mIoU": 40.0, "pACC": 61.0},
        "panoptic_seg": {"PQ": pq, "SQ": 79.0, "RQ": 54.0, "PQ_th": pq + 4, "PQ_st": pq - 3},
    }}


class TestSeeds(unittest.TestCase):
    def test_runs_summary_and_table(self):
        calls = []

        def fake_run(cmd, check, cwd, env):
            calls.append((cmd, env["OMP_NUM_THREADS"]))
            out = cmd[cmd.index("OUTPUT_DIR") + 1]
            seed = int(cmd[cmd.index("SEED") + 1])
            os.makedirs(out)
            with open(os.path.join(out, "eval_results.json"), "w") as f:
                json.dump(results(36.0 + 2 * seed, 40.0 + 3 * seed), f)

        with tempfile.TemporaryDirectory() as root, mock.patch.object(
            seeds.subprocess, "run", fake_run
        ):
            runs = seeds.run_seeds(root, [1, 2, 3], threads=2)
        self.assertEqual([c[1] for c in calls], ["2", "2", "2"])
        self.assertEqual([r["figures"]["box AP"] for r in runs], [38.0, 40.0, 42.0])
        summary = seeds.summarize_seeds(runs)
        # PQ 43, 46, 49: mean 46, range 43-49; PQ things 47, 50, 53.
        self.assertEqual(summary["PQ"], {"mean": 46.0, "min": 43.0, "max": 49.0})
        self.assertEqual(summary["PQ things"]["mean"], 50.0)
        self.assertEqual(summary["mask AP"], {"mean": 39.0, "min": 37.0, "max": 41.0})
        table = seeds.format_seeds_table(runs, summary)
        self.assertIn("| range", table)
        self.assertIn("43.0-49.0", table)
        self.assertEqual(len(table.splitlines()), 2 + 3 + 2)


if __name__ == "__main__":
    unittest.main()
