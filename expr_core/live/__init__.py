"""Per-frame work on the WebRTC threads: the expression pipeline, tracking, capture, video files. No TensorFlow."""
