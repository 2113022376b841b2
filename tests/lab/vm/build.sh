#!/bin/bash
# Build the lab VM artifacts into DEST (called by tests/lab/run, which picks DEST from the cache key):
#   DEST/vmlinux     uncompressed kernel from Debian's linux-image package (QEMU boots it via PVH,
#                    which skips ~5 s of xz decompression under TCG), or the bzImage as it is
#                    when its payload is not xz
#   DEST/initrd.img  busybox + the module subset the lab needs (9p, overlay, IPVS, netfilter, veth,
#                    bridge ...) + vm/init
#   DEST/kver        the kernel release (e.g. 6.1.0-56-amd64)
# Usage: build.sh DEST KERNEL_PACKAGE      (e.g. build.sh /var/cache/... linux-image-6.1.0-56-amd64)
# Needs: apt-get (to download the .deb), dpkg-deb, depmod/modprobe (kmod), cpio, gzip, busybox-static,
# python3 (for the xz payload). Runs as root on a Debian host. Nothing is installed on the host.
set -euo pipefail
DEST=$1 PKG=$2
HERE=$(cd "$(dirname "$0")" && pwd)
KV=${PKG#linux-image-}
WORK=$(mktemp -d "${DEST%/}.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

echo "build: downloading $PKG"
# (Sandbox::User=root: the _apt user cannot write into a root-only cache directory)
apt-get download -q -o APT::Sandbox::User=root "$PKG" >/dev/null
dpkg-deb -x "$PKG"_*.deb kpkg
rm -f "$PKG"_*.deb

# Debian 12's 6.1 bzImage carries an xz payload (CONFIG_KERNEL_XZ); the decompressed ELF is
# PVH-bootable. Its 6.12 compresses otherwise (zstd): the bzImage itself is then DEST/vmlinux, which
# QEMU's loader boots as it is (its own decompression costs seconds more under TCG).
python3 - kpkg/boot/vmlinuz-"$KV" vmlinux <<'PY'
import lzma, shutil, sys
data = open(sys.argv[1], "rb").read()
off = data.find(b"\xfd7zXZ\x00")
if off < 0:
    print("build: no xz payload in the bzImage: the bzImage itself is booted", file=sys.stderr)
    shutil.copyfile(sys.argv[1], sys.argv[2])
    sys.exit(0)
elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[off:])
if elf[:4] != b"\x7fELF":
    sys.exit("build: the xz payload is not an ELF image")
open(sys.argv[2], "wb").write(elf)
PY

# Modules: the named ones with their dependencies, copied with their tree layout. The .deb ships
# no modules.dep, hence depmod -b first. All IPVS schedulers are taken (scenarios pick any).
K=$PWD/kpkg
MODDIR=$K/lib/modules/$KV
depmod -b "$K" "$KV"
MODS="virtio_pci virtio_net 9pnet_virtio 9p overlay veth bridge dummy sch_netem af_packet
      nf_conntrack nf_nat iptable_filter iptable_nat iptable_mangle iptable_raw
      xt_mac xt_mark xt_conntrack xt_MASQUERADE xt_REDIRECT xt_multiport xt_addrtype xt_comment xt_tcpudp
      nf_tables nft_compat nft_chain_nat nft_nat nft_masq nft_redir nft_ct nfnetlink"
for f in "$MODDIR"/kernel/net/netfilter/ipvs/*.ko*; do
    m=$(basename "$f"); MODS="$MODS ${m%%.ko*}"
done
I=$PWD/initrd
mkdir -p "$I"/{bin,dev,proc,sys,mnt/lower,mnt/upper,newroot} "$I/lib/modules/$KV"
for m in $MODS; do
    modprobe -d "$K" -S "$KV" --show-depends "$m" 2>/dev/null || echo "build: module $m not found (skipped)" >&2
done | awk '$1=="insmod"{print $2}' | sort -u | while read -r f; do
    rel=${f#"$MODDIR"/}
    mkdir -p "$I/lib/modules/$KV/$(dirname "$rel")"
    cp "$f" "$I/lib/modules/$KV/$rel"
done
cp "$MODDIR"/modules.{order,builtin,builtin.modinfo} "$I/lib/modules/$KV/"
depmod -b "$I" "$KV"

cp /bin/busybox "$I/bin/busybox"
for a in sh mount umount mkdir cat cp echo switch_root modprobe sleep; do ln -s busybox "$I/bin/$a"; done
echo "$KV" > "$I/kver"
cp "$HERE/init" "$I/init"
chmod +x "$I/init"
(cd "$I" && find . | cpio -o -H newc --quiet | gzip -1) > initrd.img

mkdir -p "$DEST"
mv vmlinux initrd.img "$DEST/"
echo "$KV" > "$DEST/kver"
echo "build: $(find "$I" -name '*.ko*' | wc -l) modules; vmlinux $(du -h "$DEST/vmlinux" | cut -f1)," \
     "initrd $(du -h "$DEST/initrd.img" | cut -f1), kernel $KV"
