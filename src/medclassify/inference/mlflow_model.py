"""A medclassify bundle as an MLflow model (``pyfunc`` flavour, "models from code"): MLflow stores this
file beside the bundle and runs it to load the model, so nothing is pickled, and the bundle itself is
read with ``torch.load(..., weights_only=True)``. ``--track mlflow`` logs every run's ``best.pt``
this way::

    model = mlflow.pyfunc.load_model("runs:/RUN_ID/model")      # or the models:/ URI of the logged model
    model.predict(images)        # uint8 N x H x W (x C) array(s), image file paths, or a DataFrame with a 'path' column

The result is a DataFrame with one row per image: ``image`` (its name), ``predicted`` (the class) and
``prob_CLASS`` for every class, after the bundle's temperature, as ``medclassify predict`` gives them.
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class MedclassifyModel(PythonModel):
    """Loads the bundle logged as the artifact ``bundle`` with medclassify's own Predictor."""

    def load_context(self, context: Any) -> None:
        from medclassify.inference import Predictor

        self.predictor = Predictor.from_run(context.artifacts["bundle"], device="cpu", backend="torch")

    def predict(self, context: Any, model_input: Any, params: dict | None = None) -> Any:  # a pandas DataFrame
        import pandas as pd

        from medclassify.io import probability_columns

        if isinstance(model_input, pd.DataFrame):
            if "path" not in model_input.columns:
                raise ValueError("a DataFrame input needs a 'path' column of image files")
            model_input = list(model_input["path"])
        predictions = self.predictor.predict(model_input)
        if predictions.skipped:
            raise ValueError("; ".join(f"{name}: {reason}" for name, reason in predictions.skipped))
        frame = pd.DataFrame(predictions.probabilities, columns=probability_columns(predictions.class_names))
        frame.insert(0, "predicted", [predictions.predicted(i) for i in range(len(predictions))])
        frame.insert(0, "image", predictions.sources)
        return frame


mlflow.models.set_model(MedclassifyModel())
