"""Everything built before the first guest instruction: configs and their
errors, the Linux, Multiboot and PVH loaders, ACPI/MP tables and BIOS
data, test-guest assembly, the Debian guest kit.  Its fixtures are in the
root conftest.py (`bhive`, the private run root)."""
