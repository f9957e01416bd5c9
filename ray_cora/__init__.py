"""ray_cora: multilingual open-domain question answering (CORA, RM-MIPS pivot) on Ray."""

__version__ = "0.1.0"
