"""Offline batch inference: read rows (images + prompts), answer them in batches, append JSONL results.

inputs.py reads the rows, images.py loads their images, output.py is the resumable writer, runner.py
the local engine, ray_runner.py the same engine on Ray Data, job.py ties them together.
"""
