"""Render, build and run the images and stacks that self-host DeepSeek-R1."""
