"""What runs on the device, at the bottom of the house: ``predict.py`` and ``device_bench.py``,
which ``harness deploy`` copies into every Linux bundle as they are (see
:mod:`harness.deploy.linux`).

Both run on the device with numpy, pillow and one runtime only: they never import harness,
TensorFlow, Keras or JAX. harness imports them in turn for what must be the same on both
sides: the input contract's arithmetic, the image reader, the files' checksum and the
batch-1 timer.
"""
