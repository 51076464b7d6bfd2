"""The TensorFlow zone: the network, training, conversion and explanation, run only in worker processes.

Nothing outside this package imports TensorFlow or Keras, and nothing the Streamlit server imports reaches
this package (``tests/test_tensorflow_zone.py`` walks the import graph to prove it).
"""
