#!/usr/bin/env python
"""Train and evaluate seg2 models with Detectron2's conventions.

    python tools/train_net.py --config-file configs/X.yaml [--eval-only] [--resume] [--debug] \
        [--num-gpus N --num-machines M --machine-rank R --dist-url URL] [KEY VALUE ...]
    python tools/train_net.py --eval-only MODEL.WEIGHTS OUTPUT_DIR/model_final.pth [KEY VALUE ...]

A checkpoint written by seg2's training carries its config and classes: --eval-only takes
MODEL.WEIGHTS alone (the config it was trained with, then the overrides).

Evaluators are chosen from each test dataset's metadata; results land in
OUTPUT_DIR/eval_results.json (OUTPUT_DIR/metrics.json stays Detectron2's training log) and
prediction overlays in OUTPUT_DIR/vis. Bad data or config ends with one line on stderr and
exit status 2 (--debug or SEG2_DEBUG=1 shows the traceback), as does an OUTPUT_DIR that
another run is using. SIGTERM stops training after the current iteration with a checkpoint
at it and exit status 143; --resume continues from there.
"""
import logging
import os

import seg2  # noqa: F401  first: registers seg2's parts, imports Detectron2 quietly

# isort: split

from detectron2.engine import default_argument_parser, launch
from detectron2.utils import comm

from seg2.engine import AtomicCheckpointer, Seg2Trainer
from seg2.engine.defaults import build_cfg, format_metrics_table, setup_run, write_metrics
from seg2.engine.preemption import forward_stop_signals
from seg2.engine.run_lock import hold_output_dir
from seg2.utils.cli import add_debug_argument, run_cli, set_debug, user_errors
from seg2.utils.visualize import save_prediction_overlays

logger = logging.getLogger("seg2")


def finish(cfg, model, results):
    """Table, eval_results.json and overlays (main process only)."""
    if not comm.is_main_process():
        return
    if results:
        logger.info("Results:\n" + format_metrics_table(results))
        write_metrics(results, cfg.OUTPUT_DIR)
    else:
        logger.info("No evaluation results (DATASETS.TEST is empty or TEST.EVAL_PERIOD skipped it)")
    if cfg.DATASETS.TEST and cfg.TEST.SEG2.NUM_VIS > 0:
        model = getattr(model, "module", model)  # unwrap DDP
        save_prediction_overlays(
            cfg,
            model,
            cfg.DATASETS.TEST[0],
            os.path.join(cfg.OUTPUT_DIR, "vis"),
            cfg.TEST.SEG2.NUM_VIS,
        )


@user_errors
def main(args):
    cfg = build_cfg(args)
    cfg.freeze()
    with hold_output_dir(cfg.OUTPUT_DIR):  # before anything is written there
        setup_run(cfg, args)
        return run(cfg, args)


def run(cfg, args):
    """Evaluate (--eval-only) or train, then write the results (this process's part)."""
    if args.eval_only:
        model = Seg2Trainer.build_model(cfg)
        # strict: a checkpoint whose shapes do not fit this config is an error, not a
        # silently re-initialised head
        AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR, strict_shapes=True).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Seg2Trainer.test(cfg, model)
        finish(cfg, model, results)
        return results
    trainer = Seg2Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    results = trainer.eval_results
    finish(cfg, trainer.model, results)
    return results


if __name__ == "__main__":
    args = add_debug_argument(default_argument_parser()).parse_args()
    set_debug(args.debug)
    print("Command Line Args:", args)
    with forward_stop_signals(args.num_gpus * args.num_machines > 1):  # to launch's processes
        run_cli(
            launch,
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
