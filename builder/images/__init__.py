"""The image catalog (images/*/image.yaml), its Dockerfile renders, builds, tags and publishing."""
