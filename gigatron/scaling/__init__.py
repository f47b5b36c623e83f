"""Scaling-law fits from real runs: parametric (Chinchilla approach 3), IsoFLOP, envelope, power laws."""
