"""
The lookup API under its first name: L{netecho.dns.api} (see there).
Kept for code that imports C{netecho.lookup}; new code imports C{netecho.dns.api}.
"""

from netecho.dns.api import (
    DEFAULT_BUFSIZE,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    HOST,
    IP,
    Answer,
    Result,
    Upstreams,
    hosts_addresses,
    hosts_names,
    lookup,
    query,
    system_servers,
)

__all__ = [
    "DEFAULT_BUFSIZE", "DEFAULT_RETRIES", "DEFAULT_TIMEOUT", "HOST", "IP", "Answer", "Result", "Upstreams",
    "hosts_addresses", "hosts_names", "lookup", "query", "system_servers",
]
