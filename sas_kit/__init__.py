"""sas-kit: a teaching and reproducibility kit for SAS (Segment Anything Small for Ultrasound)."""

__version__ = "0.1.0"
