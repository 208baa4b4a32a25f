"""ztun: a tun2socks in Python -- kernel TCP through a NAT hairpin, SOCKS5 outbound."""

__version__ = "0.1.0"
