"""Checkpoint loading and saving: find files, map tensor names, load straight into place."""
