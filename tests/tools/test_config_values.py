"""Config values that cannot work end before anything is built, through the tools' real
``main`` (in this process: the checks come before the model and data): one line naming the
key and exit status 2, where they used to loop forever (SOLVER.IMS_PER_BATCH 0), train
nothing (BASE_LR 0) or end in a traceback (ValueError, RuntimeError, NotADirectoryError,
FileExistsError)."""

import contextlib
import io
import os
import tempfile
import unittest

import torch
from detectron2.engine import default_argument_parser

from seg2.engine.config_check import ConfigError, check_config
from seg2_testing import REPO_ROOT, get_seg2_cfg

INSTANCE = "Synthetic-InstanceSegmentation/mask_rcnn_R_18_FPN_synthetic.yaml"


def errors_of(main, argv):
    """(exit status, seg2's error lines on stderr) of a tool's ``main`` run here."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return code, [line for line in err.getvalue().splitlines() if line.startswith("error")]


class TestConfigValues(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="seg2-values-")
        cls.a_file = os.path.join(cls.tmp, "a_file")
        open(cls.a_file, "w").close()

    def train_net(self, *opts, eval_only=False):
        import train_net  # tools/

        argv = ["--config-file", str(REPO_ROOT / "configs" / INSTANCE)]
        argv += ["--eval-only"] if eval_only else []
        argv += [*opts] if "OUTPUT_DIR" in opts else [*opts, "OUTPUT_DIR", self.tmp + "/out"]
        return errors_of(train_net.main, default_argument_parser().parse_args(argv))

    def assert_refused(self, result, expected):
        code, errors = result
        self.assertEqual(code, 2, errors)
        self.assertEqual(errors, [f"error: {expected}"])

    def test_training_values(self):
        self.assert_refused(
            self.train_net("SOLVER.IMS_PER_BATCH", "0"),
            "SOLVER.IMS_PER_BATCH = 0: the images per iteration, all processes together, "
            "must be at least 1",
        )
        self.assert_refused(
            self.train_net("SOLVER.BASE_LR", "0.0"),
            "SOLVER.BASE_LR = 0.0: the learning rate must be > 0",
        )
        self.assert_refused(
            self.train_net("INPUT.MIN_SIZE_TRAIN", "()"),
            "INPUT.MIN_SIZE_TRAIN is empty: give the training sizes of the shorter image "
            "side, e.g. (640, 672, 704)",
        )

    def test_batch_shared_by_processes(self):
        # the world size train_net's workers see (comm.get_world_size()), given directly
        cfg = get_seg2_cfg(INSTANCE)
        cfg.SOLVER.IMS_PER_BATCH = 3
        with self.assertRaises(ConfigError) as ctx:
            check_config(cfg, world_size=2, output_dir=False)
        self.assertEqual(
            str(ctx.exception),
            "SOLVER.IMS_PER_BATCH = 3 is not divisible by the 2 processes (--num-gpus x "
            "--num-machines): each takes an equal share; use a multiple of 2",
        )
        cfg.SOLVER.IMS_PER_BATCH = 4
        check_config(cfg, world_size=2, output_dir=False)
        # Detectron2's REFERENCE_WORLD_SIZE rescales the batch: 4 for 2 -> 6 for 3
        cfg.SOLVER.REFERENCE_WORLD_SIZE = 2
        check_config(cfg, world_size=3, output_dir=False)
        cfg.SOLVER.REFERENCE_WORLD_SIZE = 3
        with self.assertRaisesRegex(ConfigError, "not divisible by SOLVER.REFERENCE_WORLD_SIZE = 3"):
            check_config(cfg, world_size=3, output_dir=False)

    def test_device(self):
        # a CUDA index this machine does not have (with or without a GPU)
        missing = f"cuda:{torch.cuda.device_count()}"
        code, errors = self.train_net("MODEL.DEVICE", missing)
        self.assertEqual(code, 2, errors)
        self.assertEqual(len(errors), 1)
        self.assertTrue(errors[0].startswith(f"error: MODEL.DEVICE = {missing!r}, but "), errors)
        if not torch.cuda.is_available():
            self.assert_refused(
                self.train_net("MODEL.DEVICE", "cuda"),
                "MODEL.DEVICE = 'cuda', but CUDA is not available here ("
                + ("torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible")
                + "); set MODEL.DEVICE cpu",
            )
        self.assert_refused(
            self.train_net("MODEL.DEVICE", "gpu"),
            "MODEL.DEVICE = 'gpu' is not a device name (cpu, cuda, cuda:N)",
        )

    def test_output_dir(self):
        self.assert_refused(
            self.train_net("OUTPUT_DIR", self.a_file), f"OUTPUT_DIR = {self.a_file}: is a file"
        )
        below = os.path.join(self.a_file, "run")
        self.assert_refused(
            self.train_net("OUTPUT_DIR", below), f"OUTPUT_DIR = {below}: {self.a_file} is a file"
        )
        if os.geteuid() != 0:  # root writes anywhere
            locked = os.path.join(self.tmp, "locked")
            os.mkdir(locked, 0o500)
            self.assert_refused(
                self.train_net("OUTPUT_DIR", os.path.join(locked, "run")),
                f"OUTPUT_DIR = {os.path.join(locked, 'run')}: {locked} is not writable",
            )

    def test_predict_output_is_a_file(self):
        import predict  # tools/

        code, errors = errors_of(
            predict.main,
            ["--config-file", str(REPO_ROOT / "configs" / INSTANCE), "--input", self.tmp,
             "--output", self.a_file, "MODEL.DEVICE", "cpu"],
        )  # fmt: skip
        self.assertEqual(code, 2)
        self.assertEqual(errors, [f"error: --output {self.a_file}: is a file"])

    def test_eval_only_without_weights(self):
        self.assert_refused(
            self.train_net("MODEL.DEVICE", "cpu", eval_only=True),
            "MODEL.WEIGHTS is empty: evaluating (--eval-only) or exporting needs the trained "
            "model, MODEL.WEIGHTS path/to/model_final.pth (or --resume with a checkpoint in "
            "OUTPUT_DIR)",
        )

    def test_without_config_file_or_weights(self):
        import train_net  # tools/

        args = default_argument_parser().parse_args(["--eval-only"])
        self.assert_refused(
            errors_of(train_net.main, args),
            "give --config-file FILE, or MODEL.WEIGHTS of a checkpoint written by seg2's "
            "training (it carries the config it was trained with)",
        )


if __name__ == "__main__":
    unittest.main()
