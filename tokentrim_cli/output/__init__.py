"""What a run writes and shows: the MP4, the sidecar, the run's files, the display."""
