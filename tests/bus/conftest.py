"""The bus: message schema, shared memory (state stores, console rings),
exit channels between processes, and one real actor process on its
runtime, driven by the test playing the supervisor and a vCPU.  Its
fixtures are in the root conftest.py (the private run root)."""
