"""NATS: the embedded server, the connection, and what the gateway keeps on JetStream."""
