"""Task models on the relational embedding: train on one release, keep using them on later ones.

    from cairn.tasks import open_release, read_labelled, train_task_model, evaluate_task_model, load_task_model

    release = open_release("releases/1.0.0")
    data = read_labelled("train.csv", text_column="text", label_column="topic")
    model = train_task_model(release, data.texts, data.labels, dims=64, kind="logreg")
    model.save("topic-model")
    newer = open_release("releases/1.1.0")
    model = load_task_model("topic-model", newer.landmarks)   # LandmarkError if the landmark set is incompatible
    print(evaluate_task_model(model, newer, test.texts, test.labels))   # accuracy, macro_f1, ...

`measures` holds the measurement functions used by bench/ (stability, stitching, prefix curves).
"""

from cairn.tasks.api import (
    Release,
    evaluate_task_model,
    open_release,
    train_task_model,
)
from cairn.tasks.data import Labelled, read_labelled
from cairn.tasks.model import TaskModel, anchors_digest, fit_head, load_task_model

__all__ = [
    "Labelled",
    "Release",
    "TaskModel",
    "anchors_digest",
    "evaluate_task_model",
    "fit_head",
    "load_task_model",
    "open_release",
    "read_labelled",
    "train_task_model",
]
