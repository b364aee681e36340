"""Host agent: boots through a signature chain, runs VMs, migrates their memory."""
