"""NATS bridges: JetStream KV, streams and Object Store, over the bus's own connection."""
