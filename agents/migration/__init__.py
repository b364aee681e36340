"""Migration coordinator: moves VMs between hosts without losing them."""
