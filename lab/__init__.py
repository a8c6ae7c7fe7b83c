"""The two-gateway strongSwan lab in network namespaces."""
