"""Manifests (SPEC §2.1/§2.2) and the Ray Data pipelines that decode them."""
