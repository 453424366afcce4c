"""Data: read rows, standardize them into conversations, render and tokenize with loss masks."""
