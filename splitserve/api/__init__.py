"""The wire contract: generated code per API version (proto/ holds the sources)."""
