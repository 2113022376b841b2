#!/bin/bash
# lab-timeout: 420
# seed000 with lvs-hooks from the RPM (packaging/): the package's files at their packaged paths
# in the guest, its %post run, and keepalived on both directors running the packaged wrapper
# with the bundled dependencies; then the wrapper's status, snapshot and reseed --dry-run
# against the real kernel of dir1. Not in the lab tier (pytest -m lab): run it with
#
#   packaging/lab-rpm                     # builds the RPM, unpacks it, runs this scenario
#
# or by hand: tests/lab/run --lvs-hooks ROOT/usr/libexec/keepalived/lvs-hooks -e LAB_RPM=RPM
# seed000-rpm, where ROOT is the RPM unpacked on the host (rpm2cpio) and RPM its file. The guest's
# root is a tmpfs overlay: the payload installed here is gone at power-off.
set -u
. "$LAB_DIR/lib.sh"

lab_step "install the RPM's payload into the guest's / and run its %post"
[ -n "${LAB_RPM:-}" ] && [ -f "$LAB_RPM" ] || lab_die "set LAB_RPM to the RPM (-e LAB_RPM=FILE)"
(cd / && rpm2cpio "$LAB_RPM" | cpio -idmu --quiet) || lab_die "cannot unpack $LAB_RPM"
rpm -qp --qf '%{POSTIN}' "$LAB_RPM" > "$LAB_TMP/post.sh"
sh "$LAB_TMP/post.sh" 1 || lab_die "%post failed"
# `lvs-hooks` on PATH (the runner's --lvs-hooks) must be the packaged wrapper, byte for byte
target=$(sed -n 's/^exec \([^ ]*\) .*/\1/p' /usr/local/bin/lvs-hooks | tr -d "'")
cmp -s "$target" /usr/libexec/keepalived/lvs-hooks \
    || lab_die "lvs-hooks on PATH runs '$target', not the packaged wrapper (--lvs-hooks ROOT/usr/libexec/keepalived/lvs-hooks)"
py=$(sh -x /usr/libexec/keepalived/lvs-hooks --version 2>&1 >/dev/null | sed -n 's/^+ exec \([^ ]*\) .*/\1/p')
lab_log "$(lvs-hooks --version) from $LAB_RPM, run by $py ($($py --version 2>&1))"
lab_log "bytecode compiled by %post: $(find /usr/lib/lvs-hooks -name '*.pyc' | wc -l) files"

export LVS_HOOKS=1
export LVS_HOOKS_MODE=${LVS_HOOKS_MODE:-fifo}
bash "$LAB_DIR/scenarios/seed000.sh"
rc=$?
[ "$rc" = 0 ] || lab_die "seed000 with the packaged lvs-hooks failed (rc $rc)"

lab_step "the packaged wrapper against dir1's kernel (master since step 3)"
cfg="$LAB_TMP/dir1/lvs-hooks.yaml"
for cmd in "status" "snapshot" "snapshot --list" "reseed --dry-run --latest"; do
    echo "--- /usr/sbin/lvs-hooks $cmd"
    # shellcheck disable=SC2086
    nsx dir1 /usr/sbin/lvs-hooks --config "$cfg" $cmd
    echo "rc=$?"
done 2>&1 | tee "$LAB_OUT/rpm-commands.txt"
r="{"; sep=""
while read -r line; do
    case "$line" in
    "--- /usr/sbin/lvs-hooks "*) c=${line#--- /usr/sbin/lvs-hooks } ;;
    rc=*) r+="$sep\"$c\": ${line#rc=}"; sep=", " ;;
    esac
done < "$LAB_OUT/rpm-commands.txt"
lab_result_json rpm.json "rpm=\"$(basename "$LAB_RPM")\"" "python=\"$py\"" "command_rc=$r}"
grep -q '^rc=[1-9]' "$LAB_OUT/rpm-commands.txt" && lab_die "a packaged command failed (see above)"
lab_log "seed000-rpm done: retention table above, figures in $LAB_OUT/result.json and rpm.json"
