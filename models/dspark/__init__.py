"""DSpark: a learned block drafter with serial correction and confidence, and its training toolkit."""
