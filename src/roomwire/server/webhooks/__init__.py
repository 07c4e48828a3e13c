"""Room lifecycle webhooks (docs/operations.md, "Webhooks").

Pure rules: ``model`` (events, endpoints), ``policy`` (who wants what, which targets are
allowed), ``grace`` (holding ``channel_vacated``/``peer_left``), ``schedule`` (retry backoff,
batch bounds). Drivers: ``outbox`` (the persisted queue), ``service`` (observes the hub,
delivers over HTTP), ``stats`` (counters and the last attempts).
"""
