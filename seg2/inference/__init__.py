"""Running a trained model on the user's own images and videos (``tools/predict.py``):
input listing, batched prediction, result files in the standard formats, overlays."""

from .inputs import assign_image_ids, expand_inputs, unique_stems
from .predictor import BatchPredictor
from .run import PredictionSummary, predict_images
from .writers import ResultWriter, dataset_categories

__all__ = [
    "BatchPredictor",
    "PredictionSummary",
    "ResultWriter",
    "assign_image_ids",
    "dataset_categories",
    "expand_inputs",
    "predict_images",
    "unique_stems",
]
