"""Dense, MoE and Mixture-of-Transformers decoders with shared parts, plus their accounting."""
