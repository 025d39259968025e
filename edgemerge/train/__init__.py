"""Training merge metrics (DTEM) with the backbone frozen: `train_metric` behind `edgemerge train-metric`."""

from edgemerge.train.metric import TrainOptions, train_metric

__all__ = ["TrainOptions", "train_metric"]
