"""The distributed pipeline on Ray: one actor kind per stage, and the job driver."""
