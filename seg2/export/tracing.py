"""TorchScript export by tracing, through Detectron2's :class:`TracingAdapter`.

What is traced per meta-architecture (everything after it runs in Python, see
:mod:`seg2.export.runtime`):

* semantic (``Seg2SemanticSegmentor``, Detectron2's ``SemanticSegmentor``): the whole
  ``forward``: normalisation, padding, backbone, head, crop -> (K, H, W) logits.
* ``GeneralizedRCNN`` (Mask R-CNN): ``inference(do_postprocess=False)`` -> boxes, scores,
  classes, (N, 1, M, M) mask probabilities at the network input's scale (Detectron2's own
  export recipe; pasting masks into the image is Python).
* ``Seg2PanopticRCNN``: the same plus the semantic branch's (K, H, W) logits; the fusion
  (data-dependent loops over instances, dict outputs) runs in Python on these.

seg2's semantic heads compute crop/pad and upsampling target sizes as Python ints
(``crop_or_pad``, transposed-conv output padding, U-Net skip crops, DeconvNet switches), so a
trace holds them fixed: their exports take exactly the traced input size (``input_size`` in
the manifest, the runtime pads to it). Mask R-CNN traces size-generic (Detectron2's
tracing support), so its export takes any size.
"""

import json
import os
import warnings
from typing import Dict, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.export import TracingAdapter
from detectron2.modeling import GeneralizedRCNN

from ..io import InputError, atomic_open, write_json
from ..structures.panoptic import invert_id_map

__all__ = ["MANIFEST", "class_manifest", "export_kind", "trace_model", "export_torchscript"]

# Name of the manifest stored inside the TorchScript file (and written beside it).
MANIFEST = "seg2_export.json"
# torch 2.14 flags TorchScript as deprecated in favour of torch.export; it still works, and
# Detectron2's export support is TorchScript, so keep the notice out of users' logs.
DEPRECATED = r".*is deprecated\. Please switch to `torch\.export`"


def export_kind(model: torch.nn.Module) -> str:
    """ "semantic", "rcnn" or "panoptic" (a GeneralizedRCNN with a semantic branch)."""
    if isinstance(model, GeneralizedRCNN):
        if not hasattr(model, "sem_seg_head"):
            return "rcnn"
        if hasattr(model, "fusion"):
            return "panoptic"
        raise InputError(
            f"MODEL.META_ARCHITECTURE {type(model).__name__}: a semantic branch without a seg2 "
            "fusion (e.g. Detectron2's PanopticFPN) cannot be exported; Seg2PanopticRCNN can"
        )
    if hasattr(model, "sem_seg_head") and hasattr(model, "backbone"):
        return "semantic"
    raise InputError(
        f"MODEL.META_ARCHITECTURE {type(model).__name__}: export supports semantic "
        "segmentors, GeneralizedRCNN and Seg2PanopticRCNN"
    )


def _rcnn_outputs(model, inputs) -> Tuple[torch.Tensor, ...]:
    results = model.inference(inputs, do_postprocess=False)
    if isinstance(results, tuple):  # Seg2PanopticRCNN: (instances, semantic logits)
        instances, sem = results
        extra: Tuple[torch.Tensor, ...] = (sem[0],)
    else:
        instances, extra = results, ()
    inst = instances[0]
    return (inst.pred_boxes.tensor, inst.scores, inst.pred_classes, inst.pred_masks) + extra


OUTPUT_NAMES = {
    "semantic": ["sem_seg"],
    "rcnn": ["boxes", "scores", "classes", "mask_probs"],
    "panoptic": ["boxes", "scores", "classes", "mask_probs", "sem_seg"],
}


def trace_model(model: torch.nn.Module, image: torch.Tensor) -> torch.jit.ScriptModule:
    """Trace ``model`` (eval mode) on one (C, H, W) image already resized for the network.

    Returns:
        a ScriptModule called as ``module(image)`` returning the tensors of
        ``OUTPUT_NAMES[export_kind(model)]`` (a tuple, or one tensor for "semantic").
    """
    kind = export_kind(model)
    inference = None if kind == "semantic" else _rcnn_outputs
    with torch.no_grad(), warnings.catch_warnings():
        # Each Python int/bool the trace freezes warns; the module docstring says which.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=DEPRECATED, category=FutureWarning)
        adapter = TracingAdapter(model, [{"image": image}], inference)
        return torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)


def class_manifest(metadata) -> Dict:
    """What the exported outputs' class ids mean, from Detectron2 metadata: per kind, the
    class names and the dataset's category id of each contiguous id (None where the
    metadata maps none), so results can be written with the dataset's own ids."""
    out = {}
    for kind in ("thing", "stuff"):
        names = list(metadata.get(f"{kind}_classes", None) or [])
        if not names:
            continue
        ids = invert_id_map(metadata.get(f"{kind}_dataset_id_to_contiguous_id", None))
        out[f"{kind}_classes"] = [str(n) for n in names]
        out[f"{kind}_category_ids"] = [ids.get(i) for i in range(len(names))]
    return out


def export_torchscript(
    cfg: CfgNode,
    model: torch.nn.Module,
    image: torch.Tensor,
    output_dir: str,
    metadata=None,
) -> Dict:
    """Trace ``model`` on ``image`` and write ``output_dir/model.ts`` (the manifest is stored
    inside it as an extra file) and ``output_dir/seg2_export.json``.

    Args:
        cfg: the model's config (test resize, input format, fusion settings).
        model: the eval-mode model with its weights.
        image: (C, H, W) float tensor in ``INPUT.FORMAT``, resized by the test augmentation.
        metadata: the classes the model predicts (Detectron2 metadata); the manifest then
            carries their names and category ids (:func:`class_manifest`).

    Returns:
        the manifest.
    """
    kind = export_kind(model)
    manifest = {
        "format": "torchscript",
        "kind": kind,
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "outputs": OUTPUT_NAMES[kind],
        "input_format": cfg.INPUT.FORMAT,
        "input_size": [int(image.shape[-2]), int(image.shape[-1])],
        # seg2's semantic heads trace with fixed sizes; Mask R-CNN traces size-generic.
        "fixed_input_size": kind != "rcnn",
        "pixel_mean": [float(v) for v in model.pixel_mean.flatten().tolist()],
        "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST),
        "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST),
        "torch_version": torch.__version__,
    }
    if metadata is not None:
        manifest.update(class_manifest(metadata))
    if kind == "panoptic":
        from ..modeling.fusion import FUSION_REGISTRY

        name = type(model.fusion).__name__
        manifest.update(
            thing_ids=list(model.thing_ids),
            stuff_ids=list(model.stuff_ids),
            fusion={"name": name, "kwargs": FUSION_REGISTRY.get(name).from_config(cfg)},
        )
    traced = trace_model(model.eval(), image)
    with atomic_open(os.path.join(output_dir, "model.ts"), "wb") as f:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=DEPRECATED, category=FutureWarning)
            torch.jit.save(traced, f, _extra_files={MANIFEST: json.dumps(manifest)})
    write_json(manifest, os.path.join(output_dir, MANIFEST))
    return manifest
