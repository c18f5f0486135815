"""raypipe: Ray-native alignment of text-to-video flow models with human feedback."""

__version__ = "0.1.0"
