"""The assistant: answers each user message by streaming a reply from the model."""
