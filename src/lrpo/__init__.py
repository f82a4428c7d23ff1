"""lrpo: blind face restoration improved with online reinforcement learning (LRPO)."""

__version__ = "0.1.0"
