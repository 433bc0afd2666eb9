"""Docker: pure argv/bake builders, Dockerfile reading, and the engine wrapper."""
