"""cvae-mnist"""

__version__ = "0.1"
