"""The cron input binding: ticks on a schedule, kept in a JetStream stream on the bus."""
