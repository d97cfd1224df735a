"""samora-kit: adapt the Segment Anything Model to medical images with few labels."""

__version__ = "0.1.0"
