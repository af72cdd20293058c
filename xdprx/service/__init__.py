"""The service around the data path: the daemon, its control socket, the CLI,
config, metrics, systemd notify, the live view, doctor, demo, subscribe."""
