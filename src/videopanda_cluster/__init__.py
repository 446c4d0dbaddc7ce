"""VideoPanda Cluster: distributed batch inference for the Video-Panda video-language model."""

__version__ = "0.1.0"
