"""
DNS lookups through twisted.names, as dig does them, in four parts:

- L{netecho.dns.names}: names between text and the wire (dig's escapes, IDNA);
- L{netecho.dns.text}: record types, record data and statistics as dig prints them;
- L{netecho.dns.wire}: the exchange with a server (UDP, TCP, TLS, EDNS0), checked;
- L{netecho.dns.api}: L{query} and L{lookup}, and the system's configuration.
"""
