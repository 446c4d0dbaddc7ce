"""Video ingestion: probe, frame sampling, seek-based decoding and the reference preprocessing.

The public entry point is :func:`videopanda_cluster.video.load.load_video`.
"""
