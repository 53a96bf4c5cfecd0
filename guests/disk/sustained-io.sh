#!/bin/sh
# The sustained-I/O workload of issue #11, run inside a Debian guest-kit
# image (sent through bhive/guestkit/console.py; see bhive/guestkit/diskio.py).
#
#   sustained-io.sh write [MiB]   pseudo-random data (/dev/urandom) written twice,
#                                 once through the file system (page cache) and
#                                 once with O_DIRECT, synced, caches dropped,
#                                 read back (buffered and O_DIRECT) and compared
#                                 with the checksum of what was written
#   sustained-io.sh verify        on a fresh boot: read both files back (caches
#                                 dropped first) and compare with the sums the
#                                 write pass stored beside them
#
# Prints "bhive-io: ..." lines (sizes, seconds, MiB/s) and ends with
# "bhive-io: PASS <phase>" and status 0, or "bhive-io: FAIL ..." and status 1.
# The pattern is staged in /dev/shm: the guest needs RAM for MiB more.
set -eu
phase=${1:?usage: sustained-io.sh write [MiB] | verify}
mib=${2:-256}
dir=/var/tmp/bhive-io
sums=$dir/SUMS

now() { date +%s.%N; }
rate() {   # MiB seconds_from seconds_to -> "N.N s, M.M MiB/s"
	awk -v m="$1" -v a="$2" -v b="$3" 'BEGIN { t = b - a; if (t <= 0) t = 1e-9; printf "%.1f s, %.1f MiB/s", t, m / t }'
}
fail() { echo "bhive-io: FAIL $*"; exit 1; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
sum_of() { md5sum | cut -d' ' -f1; }

case "$phase" in
write)
	rm -rf "$dir"
	mkdir -p "$dir"
	t0=$(now)
	dd if=/dev/urandom of=/dev/shm/pattern bs=1M count="$mib" iflag=fullblock status=none
	want=$(sum_of < /dev/shm/pattern)
	t1=$(now)
	echo "bhive-io: pattern $mib MiB md5 $want ($(rate "$mib" "$t0" "$t1"))"

	t0=$(now)
	dd if=/dev/shm/pattern of="$dir/buffered.bin" bs=1M status=none
	sync
	t1=$(now)
	echo "bhive-io: write buffered $mib MiB + sync ($(rate "$mib" "$t0" "$t1"))"

	t0=$(now)
	dd if=/dev/shm/pattern of="$dir/direct.bin" bs=1M oflag=direct status=none
	sync
	t1=$(now)
	echo "bhive-io: write O_DIRECT $mib MiB + sync ($(rate "$mib" "$t0" "$t1"))"
	rm -f /dev/shm/pattern

	printf '%s %s\n' "$want" buffered.bin "$want" direct.bin > "$sums"
	sync
	;;
verify)
	[ -r "$sums" ] || fail "no $sums: the write pass did not run on this disk (or its data is gone)"
	;;
*)
	fail "unknown phase $phase"
	;;
esac

drop_caches
while read -r want file; do
	t0=$(now)
	if [ "$file" = direct.bin ]; then
		got=$(dd if="$dir/$file" bs=1M iflag=direct status=none | sum_of)
	else
		got=$(sum_of < "$dir/$file")
	fi
	t1=$(now)
	size=$(( $(stat -c %s "$dir/$file") / 1048576 ))
	echo "bhive-io: read $file $size MiB md5 $got ($(rate "$size" "$t0" "$t1"))"
	[ "$got" = "$want" ] || fail "$phase: $file reads back as $got, was written as $want"
done < "$sums"
echo "bhive-io: PASS $phase"
