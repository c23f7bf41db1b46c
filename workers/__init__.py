"""One run: data and label noise, models, the training loop, the curvature estimator."""
