"""Scores computed from embeddings (retrieval), shared by training (validation) and evaluation."""
