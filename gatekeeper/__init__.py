"""Gatekeeper: an OpenAI-compatible AI request gateway on NATS JetStream."""

__version__ = "0.1.0"
