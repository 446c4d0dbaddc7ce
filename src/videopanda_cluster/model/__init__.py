"""The Video-Panda model: STAB video tower, projector, Llama backbone, checkpoints, generation."""
