"""GPU failure prediction (features, labels, calibrated model, explanations, evaluation) and fleet reliability."""
