"""Training the chatbot itself on exported data, registering it as a candidate, A/B tests."""
