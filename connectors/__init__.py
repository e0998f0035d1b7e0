"""Chat apps: the four platform connectors, the gateway (policy, pairing, inbox), the outbound path every reply takes, and the audit log.
May import: aibox.config, aibox.secrets, aibox.store (never agents, models or the router: answers come from the responder handed in)."""
