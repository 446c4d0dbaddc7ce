"""Training recipe of Video-Panda (spec §7): data, stages, a resumable loop and Ray Train."""
