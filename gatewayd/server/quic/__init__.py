"""HTTP/3 over QUIC with safe 0-RTT: the UDP listener, the session-ticket store adapter and the early-data plumbing."""
