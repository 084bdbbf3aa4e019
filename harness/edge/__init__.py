"""Files that ``harness deploy`` copies into a bundle as they are (see :mod:`harness.deploy.linux`).

``predict.py`` runs on the device with numpy, pillow and one runtime only: it must never
import harness, TensorFlow, Keras or JAX.
"""
