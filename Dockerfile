# syntax=docker/dockerfile:1
# The trainer on every GPU of a machine (see BUILD.md):
#   docker build -t nailseg-trainer .
#   docker run --gpus all -v /data/nails:/data:ro -v "$PWD/runs:/work" nailseg-trainer \
#       --config=configs/nail_unet_effb4.py --strategy=mirrored --data_root=/data --workdir=/work
#
# The base image carries TensorFlow (the version pyproject.toml pins) with its
# CUDA and cuDNN, so only the trainer's other dependencies are installed here.
FROM tensorflow/tensorflow:2.21.0-gpu

# TF_USE_LEGACY_KERAS and SM_FRAMEWORK are also set by `trainer/__init__.py`;
# set here too so that a user's own script or `python -c` in the image gets Keras 2.
ENV TF_USE_LEGACY_KERAS=1 \
    SM_FRAMEWORK=tf.keras \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib

# Training runs as uid 1000, the usual first user of a Linux host, so that files
# written to a bind-mounted work directory belong to that user (`docker run
# --user "$(id -u):$(id -g)"` for another). Ubuntu 24.04 bases ship a user
# `ubuntu` with that uid; it is removed so that the uid is free.
RUN (userdel --remove ubuntu 2>/dev/null || true) \
    && useradd --create-home --uid 1000 --user-group --shell /bin/bash trainer

WORKDIR /app

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml
# changes, not on every source or README edit. Empty files stand in for the
# source and the README so that pip can build the project; the real ones
# replace them below. The constraint pins TensorFlow to the base image's own
# build, so pip fails rather than replace it with a wheel built against other
# CUDA libraries; PIP_CONSTRAINT keeps that true for `pip install` in images
# built on this one.
COPY pyproject.toml ./
RUN mkdir trainer configs \
    && touch README.md trainer/__init__.py configs/__init__.py \
    && python -c "import importlib.metadata as m; print('tensorflow==' + m.version('tensorflow'))" \
        > /etc/pip-constraints.txt \
    && python -m pip install --no-cache-dir --constraint /etc/pip-constraints.txt . \
    && rm -rf README.md trainer configs build ./*.egg-info
ENV PIP_CONSTRAINT=/etc/pip-constraints.txt

COPY README.md ./
COPY trainer ./trainer
COPY configs ./configs
COPY launch ./launch
RUN python -m pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info

# Numeric, so that Kubernetes' runAsNonRoot can check that it is not root.
USER 1000:1000
ENTRYPOINT ["python", "-m", "trainer.train"]
CMD ["--helpshort"]
