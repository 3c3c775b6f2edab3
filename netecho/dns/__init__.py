"""DNS lookups on twisted.names: names, presentation text, the wire exchange, the API."""
