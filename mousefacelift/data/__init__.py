"""Recordings, procedural data, extraction, the sample format and preprocessing strategies."""
