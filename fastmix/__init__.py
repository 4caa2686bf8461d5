"""fastmix: fast data loading and performance engineering for ConvMixer on one small GPU."""
__version__ = "0.1.0"
