"""Small servers ztun ships for its demo on machines without a Debian SOCKS5 server."""
