"""Notifications (policy `spec.notify[]`): pure formatting and signing (`messages`, `signing`), a
durable outbox of ConfigMaps in the operator namespace (`outbox`), and the leader's delivery loop
(`notifier`)."""
