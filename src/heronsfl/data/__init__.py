"""Datasets as in-memory uint8 tensors, and the normalization and augmentation of batches."""
