"""Request and response models of the HTTP API (they make the OpenAPI schema)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

BLOOD_CLASSES = [
    "basophil",
    "eosinophil",
    "erythroblast",
    "immature granulocytes",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
]


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    models: int = Field(description="number of loaded models", examples=[1])


class ModelInfo(BaseModel):
    name: str = Field(description="the name to pass as ?model=", examples=["blood28"])
    version: str = Field(description="first 12 hex digits of the weights' MD5", examples=["3f9a1c0d2b7e"])
    architecture: str = Field(examples=["paper-cnn"])
    dataset: str = Field(examples=["bloodmnist"])
    task: str = Field(examples=["multi-class"])
    classes: list[str] = Field(examples=[BLOOD_CLASSES])
    image_size: int = Field(description="images are resized to image_size x image_size", examples=[28])
    channels: int = Field(examples=[3])
    backend: str = Field(description="pytorch or onnxruntime", examples=["onnxruntime"])
    explain: bool = Field(description="whether ?explain=true (the heatmaps) is available", examples=[True])
    test_metrics: dict[str, float | int | None] | None = Field(
        description="the run's test-split figures (n, acc, auc, f1_macro)",
        examples=[{"n": 3421, "acc": 0.9243, "auc": 0.9942, "f1_macro": 0.9145}],
    )
    medclassify_version: str | None = Field(examples=["0.1.0"])


class ModelList(BaseModel):
    models: list[ModelInfo]


class ClassScore(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_: str = Field(alias="class", examples=["neutrophil"])
    probability: float = Field(ge=0.0, le=1.0, examples=[0.97])


class PredictionSet(BaseModel):
    level: float = Field(gt=0.0, lt=1.0, description="how often such sets hold the true class", examples=[0.9])
    classes: list[str] = Field(
        description="the classes in the set, most probable first; empty when no class is likely enough at this level",
        examples=[["neutrophil", "band neutrophil"]],
    )


class Prediction(BaseModel):
    file: str = Field(
        description="the uploaded file's name; '[i]' marks frame i of a multi-frame DICOM", examples=["cell.png"]
    )
    prediction: str = Field(
        description="the predicted class (multi-label tasks: every label above 0.5, joined by '; ')",
        examples=["neutrophil"],
    )
    probability: float = Field(ge=0.0, le=1.0, description="the highest class probability", examples=[0.97])
    top: list[ClassScore] = Field(description="the most probable classes, best first")
    probabilities: dict[str, float] = Field(
        description="every class's probability", examples=[{"neutrophil": 0.97, "eosinophil": 0.02}]
    )
    heatmap: str | None = Field(
        None,
        description="with ?explain=true: the overlay of the predicted class (the chosen method), a PNG data URL",
        examples=["data:image/png;base64,iVBORw0KGgo..."],
    )
    decision: str | None = Field(
        None,
        description="the decision at the model's operating point (a threshold for one class chosen on "
        "validation, e.g. for a screening sensitivity): the class, or 'not CLASS'; null without one",
        examples=["pneumonia"],
    )
    prediction_set: PredictionSet | None = Field(
        None,
        description="the conformal prediction set (calibrated on validation): for images like the calibration "
        "images it holds the true class with probability 'level'; null for a model without conformal calibration",
    )
    image: str | None = Field(
        None,
        description="with ?preview=true: the decoded image (longer side at most 512 px), a PNG data URL",
        examples=["data:image/png;base64,iVBORw0KGgo..."],
    )


class PredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str = Field(examples=["blood28"])
    version: str = Field(examples=["3f9a1c0d2b7e"])
    predictions: list[Prediction]


class ErrorResponse(BaseModel):
    detail: str = Field(
        description="what was wrong, one line (422: 'WHERE: what is wrong', e.g. 'query.top: Input should be less "
        "than or equal to 100')",
        examples=["scan.gif: not a PNG, JPEG, TIFF, BMP or DICOM file (judged by its content)"],
    )
