"""Adapters: translations from what real sources send into Pulse's event schema.

Each module turns one source's wire format (raw ``eth_getLogs`` records, Alchemy Notify webhooks, ...)
into :class:`nftpulse.domain.events` events. Adapters know the event schema and nothing of the store,
the activities or the API: what is decoded here is ingested by the same path as any other event.
"""
