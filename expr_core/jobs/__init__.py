"""Long work in other processes, followed through job folders: training, video and import jobs. No TensorFlow."""
