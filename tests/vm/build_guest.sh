#!/bin/sh
# Build (idempotently) the qemu guest used by the VM lane:
#   .cache/vm/vmlinuz     Debian 12 stock kernel (linux-image-6.1.0-*-amd64)
#   .cache/vm/initrd.img  busybox initramfs whose /init mounts the host root
#                         read-only over virtio-9p, puts a tmpfs overlay on top,
#                         mounts cgroup2 at /sys/fs/cgroup (or the v1 hierarchies
#                         named by vm.cgroup=v1:...) and runs the job that
#                         tests/vm/run_in_guest.py put on the "results" 9p share.
# Only what is missing (or out of date) is rebuilt; a second run needs no network.
#
# Environment knobs:
#   VM_KERNEL_PKG=linux-image-6.1.0-NN-amd64   pin the kernel package
#   VM_CACHE_DIR=/path                         cache dir (default <repo>/.cache/vm)
set -eu

REPO=$(cd "$(dirname "$0")/../.." && pwd)
SELF="$REPO/tests/vm/build_guest.sh"
CACHE=${VM_CACHE_DIR:-$REPO/.cache/vm}
mkdir -p "$CACHE"

log() { echo "build_guest: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# One builder at a time (two lanes started together must not race).
exec 9>"$CACHE/.lock"
flock 9

# --- 1. host packages ----------------------------------------------------------
PKGS="qemu-system-x86 busybox-static cpio kmod xz-utils"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $p"
done
if [ -n "$missing" ]; then
    [ "$(id -u)" = 0 ] || die "missing packages:$missing (run as root or apt-get install them)"
    log "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    apt-get install -y --no-install-recommends $missing >&2 \
        || { apt-get update >&2 && apt-get install -y --no-install-recommends $missing >&2; } \
        || die "apt-get install$missing failed"
fi

# --- 2. kernel -------------------------------------------------------------------
KDIR="$CACHE/kernel"            # dpkg-deb -x of the kernel package
if [ ! -s "$CACHE/vmlinuz" ] || [ ! -s "$CACHE/kver" ] \
        || [ ! -d "$KDIR/lib/modules/$(cat "$CACHE/kver")" ]; then
    pkg=${VM_KERNEL_PKG:-}
    if [ -z "$pkg" ]; then
        resolve() { apt-cache depends linux-image-amd64 2>/dev/null \
                    | sed -n 's/^ *Depends: \(linux-image-6\.1\.[0-9]*-[0-9]*-amd64\)$/\1/p' | head -n1; }
        pkg=$(resolve)
        [ -n "$pkg" ] || { apt-get update >&2; pkg=$(resolve); }
        [ -n "$pkg" ] || die "cannot find the Debian 12 kernel package (apt-cache depends linux-image-amd64)"
    fi
    log "fetching kernel package $pkg"
    rm -rf "$CACHE/dl" "$KDIR"
    mkdir -p "$CACHE/dl"
    ( cd "$CACHE/dl" && { apt-get download -o APT::Sandbox::User=root "$pkg" >&2 \
        || { apt-get update >&2 && apt-get download -o APT::Sandbox::User=root "$pkg" >&2; }; } ) \
        || die "apt-get download $pkg failed"
    deb=$(ls "$CACHE"/dl/*.deb | head -n1)
    dpkg-deb -x "$deb" "$KDIR.tmp"
    mv "$KDIR.tmp" "$KDIR"
    kver=$(ls "$KDIR/lib/modules" | head -n1)
    [ -n "$kver" ] && [ -f "$KDIR/boot/vmlinuz-$kver" ] || die "unexpected layout in $deb"
    depmod -b "$KDIR" "$kver"
    cp "$KDIR/boot/vmlinuz-$kver" "$CACHE/vmlinuz.tmp"
    mv "$CACHE/vmlinuz.tmp" "$CACHE/vmlinuz"
    echo "$kver" > "$CACHE/kver"
    rm -rf "$CACHE/dl" "$CACHE/initrd.img" "$CACHE/vmlinux"   # new kernel => rebuild the rest
fi
KVER=$(cat "$CACHE/kver")

# --- 2b. uncompressed kernel for PVH boot --------------------------------------------
# Decompressing the xz bzImage takes ~2.7 s under TCG, i.e. more than half the boot.
# The Debian kernel has CONFIG_PVH=y, so qemu can boot the plain ELF vmlinux directly.
# run_in_guest.py uses .cache/vm/vmlinux when it exists and falls back to vmlinuz.
if [ ! -s "$CACHE/vmlinux" ]; then
    off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$CACHE/vmlinuz" | head -n1 | cut -d: -f1)
    if [ -n "$off" ] && tail -c +$((off + 1)) "$CACHE/vmlinuz" | xz -dc --single-stream > "$CACHE/vmlinux.tmp" 2>/dev/null \
            && [ "$(head -c 4 "$CACHE/vmlinux.tmp" | od -An -c | tr -d ' ')" = "177ELF" ]; then
        mv "$CACHE/vmlinux.tmp" "$CACHE/vmlinux"
    else
        rm -f "$CACHE/vmlinux.tmp"
        log "note: could not extract an ELF vmlinux; booting the (slower) bzImage"
    fi
fi

# --- 3. initramfs ------------------------------------------------------------------
# The stamp covers this script (the init scripts live below) and the kernel version.
stamp="$(sha256sum "$SELF" | cut -d' ' -f1) $KVER $(busybox 2>&1 | head -n1 | cut -d' ' -f2)"
if [ -s "$CACHE/initrd.img" ] && [ "$(cat "$CACHE/initrd.stamp" 2>/dev/null)" = "$stamp" ]; then
    exit 0
fi
log "building initramfs for $KVER"
STAGE="$CACHE/initrd.stage"
rm -rf "$STAGE"
mkdir -p "$STAGE/bin" "$STAGE/lib/modules" "$STAGE/dev" "$STAGE/proc" "$STAGE/sys" \
         "$STAGE/etc" "$STAGE/lower" "$STAGE/results" "$STAGE/newroot" "$STAGE/ovl"
cp "$(command -v busybox)" "$STAGE/bin/busybox"
for a in $(busybox --list); do
    [ "$a" = busybox ] || ln -sf busybox "$STAGE/bin/$a"
done
mknod -m 600 "$STAGE/dev/console" c 5 1
mknod -m 666 "$STAGE/dev/null" c 1 3

# Modules, in load order (kmod resolves dependencies; built-ins are skipped).
# Wanted: virtio PCI transport, 9p over virtio, overlayfs, virtio-rng (entropy).
: > "$STAGE/etc/modules.order"
for m in virtio_pci 9pnet_virtio 9p overlay virtio_rng; do
    modprobe -d "$KDIR" -S "$KVER" --show-depends "$m" || die "module $m not found for $KVER"
done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }' | while read -r ko; do
    name=$(basename "$ko")
    case "$name" in
        *.ko.xz)  xz -dc "$ko" > "$STAGE/lib/modules/${name%.xz}"; name=${name%.xz} ;;
        *.ko.zst) zstd -qdc "$ko" > "$STAGE/lib/modules/${name%.zst}"; name=${name%.zst} ;;
        *.ko.gz)  gzip -dc "$ko" > "$STAGE/lib/modules/${name%.gz}"; name=${name%.gz} ;;
        *)        cp "$ko" "$STAGE/lib/modules/$name" ;;
    esac
    echo "$name" >> "$STAGE/etc/modules.order"
done
[ -s "$STAGE/etc/modules.order" ] || die "no modules collected"

# ---- stage 1: /init (PID 1 in the initramfs) ----
cat > "$STAGE/init" <<'EOF'
#!/bin/busybox sh
# VM lane stage 1: build the guest root and switch into it.
export PATH=/bin
NR=/newroot
say() { echo "[vm-init] $*"; }
fatal() {
    say "FATAL: $*"
    [ -w /results ] && echo "$*" > /results/init-error.txt
    sync; reboot -f; echo b > /proc/sysrq-trigger; sleep 5
}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do
    insmod "/lib/modules/$m" || fatal "insmod $m failed"
done < /etc/modules.order

# Writable share for the job script and the results (host temp dir).
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none results /results \
    || fatal "cannot mount the results share"
# Host root, read-only.  cache=loose: the guest is short-lived and never writes
# to it, so caching dentries/pages is safe and makes imports much faster.
C9P=loose
CG=v2
for x in $(cat /proc/cmdline); do
    case "$x" in vm.9pcache=*) C9P=${x#vm.9pcache=} ;; vm.cgroup=*) CG=${x#vm.cgroup=} ;; esac
done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=$C9P,ro hostroot /lower \
    || fatal "cannot mount the host root (9p hostroot)"
# All writes go to a tmpfs upper layer.  Overlay over 9p works with Debian's
# defaults, which already are the options below; they are spelled out so that a
# kernel with other defaults behaves the same (9p has no file handles, so index
# and nfs_export cannot work on it anyway; xino cannot fit the remapped inodes).
mount -t tmpfs -o mode=755 ovl /ovl
mkdir -p /ovl/upper /ovl/work
mount -t overlay -o lowerdir=/lower,upperdir=/ovl/upper,workdir=/ovl/work,index=off,metacopy=off,xino=off,redirect_dir=off \
    overlay $NR || fatal "cannot mount the overlay root"

mount --move /proc $NR/proc
mount --move /sys  $NR/sys
mount --move /dev  $NR/dev
# vm.cgroup=v1:<hierarchy>/<hierarchy>/... (run_in_guest.py --cgroup-v1): cgroup v1, one
# mount per hierarchy, co-mounted controllers comma-separated ("cpu,cpuacct") with a
# symlink per controller, plus an empty cgroup2 at unified/, as systemd's hybrid layout.
# v1 goes first: a controller in use on cgroup2 cannot be bound to a v1 hierarchy (EBUSY).
if [ "$CG" = v2 ]; then
    mount -t cgroup2 -o nsdelegate cgroup2 $NR/sys/fs/cgroup || fatal "cannot mount cgroup2"
else
    CGD=$NR/sys/fs/cgroup
    mount -t tmpfs -o mode=755 cgroup $CGD || fatal "cannot mount the cgroup tmpfs"
    for h in $(echo "${CG#v1:}" | tr / ' '); do
        mkdir -p $CGD/$h
        mount -t cgroup -o $h cgroup $CGD/$h || fatal "cannot mount cgroup v1 hierarchy $h"
        case "$h" in *,*) for c in $(echo "$h" | tr , ' '); do ln -s "$h" $CGD/$c; done ;; esac
    done
    mkdir -p $CGD/unified
    mount -t cgroup2 -o nsdelegate cgroup2 $CGD/unified || fatal "cannot mount cgroup2"
fi
mkdir -p $NR/dev/pts $NR/dev/shm $NR/dev/mqueue
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts $NR/dev/pts
mount -t tmpfs -o mode=1777 shm $NR/dev/shm
mount -t mqueue mqueue $NR/dev/mqueue 2>/dev/null
# /tmp stays the host's (through the overlay, writes in RAM): a checkout under /tmp,
# as CI's or a new user's fresh clone may be, must be visible in the guest.
mount -t tmpfs -o mode=755 run $NR/run
mkdir -p $NR/run/vm/results
cp /bin/busybox $NR/run/vm/busybox
cp /etc/stage2 $NR/run/vm/stage2
mount --move /results $NR/run/vm/results
# switch_root = chdir(newroot) + mount --move . / + chroot . + exec.  Unlike a
# plain chroot this keeps the root a real mount root, so unshare(CLONE_NEWUSER)
# and pivot_root work in the guest.
exec switch_root $NR /run/vm/busybox sh /run/vm/stage2
fatal "switch_root failed"
EOF
chmod 755 "$STAGE/init"

# ---- stage 2: PID 1 in the real (overlay) root; runs the job ----
cat > "$STAGE/etc/stage2" <<'EOF'
# VM lane stage 2 (PID 1, in the overlay root).  Runs /run/vm/results/job.sh
# (written by run_in_guest.py), tees its output to the console and to
# results/output.log, writes results/exit_code, and powers the guest off.
BB=/run/vm/busybox
R=/run/vm/results
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
$BB hostname sandboxd-vm
$BB ip link set lo up
# Shared propagation, as systemd sets it up on a real host.
$BB mount --make-rshared /

$BB mkfifo /run/vm/out.fifo
$BB tee "$R/output.log" < /run/vm/out.fifo &
tee_pid=$!
if [ -f "$R/job.sh" ]; then
    # The host's /bin/sh (dash), not busybox ash: with busybox's "prefer applets"
    # build, ash would run its own applets in place of the real programs.
    JSH="/bin/sh"; [ -x "$JSH" ] || JSH="$BB sh"
    $JSH "$R/job.sh" > /run/vm/out.fifo 2>&1 < /dev/null
    rc=$?
else
    echo "[vm-init] no job.sh on the results share" > /run/vm/out.fifo
    rc=125
fi
# Kill whatever the job left behind (daemons would keep the fifo open), except
# tee, which then sees EOF once it has drained; give it up to 5 s.
for n in 1 2; do
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [ "$p" = 1 ] || [ "$p" = "$tee_pid" ] || $BB kill -KILL "$p" 2>/dev/null
    done
done
i=0
while $BB kill -0 $tee_pid 2>/dev/null && [ $i -lt 50 ]; do $BB sleep 0.1; i=$((i+1)); done
$BB kill -KILL -1 2>/dev/null
wait 2>/dev/null
$BB dmesg > "$R/dmesg.log" 2>/dev/null
echo $rc > "$R/exit_code.tmp" && $BB mv "$R/exit_code.tmp" "$R/exit_code"
$BB sync
# Let the serial console drain (stty sets with TCSADRAIN), or the last bytes
# of output can be lost in the reboot.
$BB stty -F /dev/console onlcr 2>/dev/null
$BB grep -q 'loglevel=7' /proc/cmdline || echo 0 > /proc/sys/kernel/printk
$BB reboot -f
echo b > /proc/sysrq-trigger
EOF

( cd "$STAGE" && find . | LC_ALL=C sort | cpio -o -H newc --quiet ) | gzip -1 > "$CACHE/initrd.img.tmp"
mv "$CACHE/initrd.img.tmp" "$CACHE/initrd.img"
echo "$stamp" > "$CACHE/initrd.stamp"
rm -rf "$STAGE"
log "ok: $CACHE/vmlinuz $CACHE/initrd.img"
