"""Distributed trainer for binary image segmentation.

segmentation_models needs Keras 2, so the legacy Keras (tf-keras) and the
matching segmentation_models framework are selected here, before anything
imports TensorFlow. Every entry point imports this package first.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ["SM_FRAMEWORK"] = "tf.keras"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
