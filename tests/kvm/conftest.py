"""The kvm accelerator and the differential CPU tester that uses it as the
oracle.  Tests that need /dev/kvm skip with the reason where it is
absent (`bhive.accel.get("kvm").available()`); the rest run anywhere."""
