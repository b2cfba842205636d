"""Candidate models: registry, generation (OpenAI-compatible endpoints, embedded local model), pairing."""
