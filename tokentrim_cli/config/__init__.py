"""Configuration: what a preset holds, how presets load and are checked, and what a run loads."""
