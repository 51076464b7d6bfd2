"""The labelled dataset: the store, import and export, the train/validation split, the review queue. No TensorFlow."""
