"""The version of buildtasks, for labels and manifests (no imports: any layer may read it)."""

__version__ = "0.1.0"
