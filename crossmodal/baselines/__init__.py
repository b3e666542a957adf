"""Training-free descriptors: sanity baselines for a dataset's difficulty per modality."""
