"""Building a DSpark drafter: prepare data from the target, train, calibrate, evaluate (behind `aibox draft`). May import: models (not aibox, agents, connectors)."""
