"""Faces in pictures: detectors, crops, drawing and decoding untrusted image files. No TensorFlow."""
