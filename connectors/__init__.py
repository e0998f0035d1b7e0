"""Messaging connectors: Telegram, Discord, Slack and WhatsApp."""
