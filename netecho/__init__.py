"""netecho: echo, random-number, RPC and DNS-lookup services on Twisted."""

__version__ = "0.1.0"
