"""bhive: a virtual-machine monitor built as a hive of processes."""
