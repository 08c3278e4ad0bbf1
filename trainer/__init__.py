"""Distributed trainer for binary image segmentation.

segmentation_models needs Keras 2, so the legacy Keras (tf-keras) and the
matching segmentation_models framework are selected here, before anything
imports TensorFlow. Python runs this file before any `trainer.*` module, so
every module and entry point of the package gets these settings; a script of
the user's only needs to import something from `trainer` before `tensorflow`.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ["SM_FRAMEWORK"] = "tf.keras"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF C++ info and warnings are noise here
