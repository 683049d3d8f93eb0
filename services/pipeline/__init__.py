"""The AGSSP pipeline: unlabelled images and a few labels in, a served detector out."""
