"""seg2.utils.cli: user errors end with one line and status 2, internal errors keep their
traceback, SEG2_DEBUG shows user-error tracebacks, launch workers' exits are passed on."""

import contextlib
import io
import logging
import os
import unittest
from unittest import mock

from torch.multiprocessing import ProcessExitedException

from seg2.io import InputError
from seg2.utils.cli import CleanExitError, run_cli, user_errors


@user_errors
def bad_input():
    raise InputError("data/train.json: annotation 7: field 'bbox' has 3 numbers, expected 4")


@user_errors
def internal():
    raise KeyError("segmentation")


@user_errors(return_code=True)
def returns():
    raise CleanExitError("training stopped at iteration 3")


class TestUserErrors(unittest.TestCase):
    def setUp(self):
        patcher = mock.patch.dict(os.environ, {"SEG2_DEBUG": ""})
        patcher.start()
        self.addCleanup(patcher.stop)

    def test_user_error_is_one_line_and_status_2(self):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as ctx:
            bad_input()
        self.assertEqual(ctx.exception.code, 2)
        self.assertEqual(
            err.getvalue(),
            "error: data/train.json: annotation 7: field 'bbox' has 3 numbers, expected 4\n",
        )

    def test_return_code_mode(self):
        with contextlib.redirect_stderr(io.StringIO()):
            self.assertEqual(returns(), 2)

    def test_internal_error_keeps_its_traceback(self):
        with self.assertRaises(KeyError):
            internal()

    def test_debug_shows_user_error_traceback(self):
        os.environ["SEG2_DEBUG"] = "1"
        with self.assertRaises(InputError):
            bad_input()

    def test_detectron2_training_loop_log_hides_user_error_traceback(self):
        records = []

        class Keep(logging.Handler):
            def emit(self, record):
                records.append(record)

        log = logging.getLogger("detectron2.engine.train_loop")
        handler = Keep()
        log.addHandler(handler)
        self.addCleanup(log.removeHandler, handler)

        @user_errors
        def train():
            try:
                raise InputError("x.png: unreadable image")
            except Exception:
                log.exception("Exception during training:")  # what Detectron2's loop does
                raise

        with contextlib.redirect_stderr(io.StringIO()), self.assertRaises(SystemExit):
            train()
        self.assertEqual(records, [])

    def test_worker_exit_status_passed_on_quietly(self):
        def launch_like():
            raise ProcessExitedException("process 1 terminated with exit code 2", 1, 1234, 2)

        with self.assertRaises(SystemExit) as ctx:
            run_cli(launch_like)
        self.assertEqual(ctx.exception.code, 2)

        def crashed():
            raise ProcessExitedException("process 1 terminated with exit code 1", 1, 1234, 1)

        with self.assertRaises(ProcessExitedException):
            run_cli(crashed)


if __name__ == "__main__":
    unittest.main()


class TestDataLoaderWorkerMessage(unittest.TestCase):
    def test_worker_traceback_stripped(self):
        import torch
        from torch.utils.data import DataLoader, Dataset

        from seg2.utils.cli import user_message

        class Broken(Dataset):
            def __len__(self):
                return 2

            def __getitem__(self, i):
                raise InputError("img/1.png: unreadable image (truncated)")

        with self.assertRaises(InputError) as ctx:
            next(iter(DataLoader(Broken(), num_workers=1, generator=torch.Generator())))
        self.assertIn("Traceback", str(ctx.exception))  # what PyTorch hands over
        self.assertEqual(user_message(ctx.exception), "img/1.png: unreadable image (truncated)")
