"""What runs on the device, at the bottom of the house: ``predict.py``, which ``harness deploy``
copies into every Linux bundle as it is (see :mod:`harness.deploy.linux`).

``predict.py`` runs on the device with numpy, pillow and one runtime only: it never imports
harness, TensorFlow, Keras or JAX. harness imports it in turn for what must be the same on
both sides: the input contract's arithmetic, the image reader and the files' checksum.
"""
