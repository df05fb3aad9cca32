"""avatarcam: a real-time webcam avatar (few-shot talking heads on a CPU)."""

__version__ = "0.1.0"
