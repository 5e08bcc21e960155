"""Sampling: text-to-video pipelines, conditional tasks, and video/GIF/image writers."""
