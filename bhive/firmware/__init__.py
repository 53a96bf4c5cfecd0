"""Firmware tables bhive writes into guest RAM: ACPI and the MP table."""
