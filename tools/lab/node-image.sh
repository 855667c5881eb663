#!/usr/bin/env bash
# Recipe for the lab node image: Debian 12 with systemd, python3 and sshd, standing in for a GPU server.
# Reached as production nodes are: SSH as an unprivileged user (ops) with sudo, keys only.
# No registry is reachable, so the root filesystem is made with debootstrap and `docker import`ed.
# Usage: node-image.sh TAG    (tools/lab/lib.sh calls it only when this file's hash has no image)
set -euo pipefail
tag="$1"
mirror="$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)"
mirror="${mirror:-$(awk '/^deb / && $3 ~ /bookworm$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)}"
mirror="${mirror:-http://deb.debian.org/debian}"
root="$(mktemp -d /var/tmp/autoglm-node.XXXXXX)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,dbus,python3,python3-apt,sudo,openssh-server,iproute2,procps,ca-certificates,kmod,curl \
  bookworm "$root" "$mirror" >/dev/null
# The apt sources and CA bundle of the build machine, so nodes reach the same archive.
cp /etc/apt/sources.list.d/*.sources "$root/etc/apt/sources.list.d/" 2>/dev/null || true
rm -f "$root/etc/apt/sources.list" 2>/dev/null || true
[ -s /etc/apt/sources.list ] && cp /etc/apt/sources.list "$root/etc/apt/sources.list"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
# A container has no consoles or udev to wait for.
for unit in getty.target systemd-udevd.service systemd-udev-trigger.service systemd-remount-fs.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
# ops: the operator account Ansible logs in as; its key is the lab's, bind-mounted read-only at
# /etc/ssh/authorized_keys/ops when a node starts (tools/lab/lib.sh LAB_SSH_DIR), so the image holds no key.
chroot "$root" useradd --create-home --shell /bin/bash ops
echo 'ops ALL=(ALL:ALL) NOPASSWD: ALL' > "$root/etc/sudoers.d/ops"
chmod 0440 "$root/etc/sudoers.d/ops"
mkdir -p "$root/etc/ssh/authorized_keys"
cat > "$root/etc/ssh/sshd_config.d/autoglm-lab.conf" <<'SSHD'
AuthorizedKeysFile /etc/ssh/authorized_keys/%u
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UseDNS no
SSHD
# Host keys are made per node at first boot (one image must not give every node the same identity).
rm -f "$root"/etc/ssh/ssh_host_*
mkdir -p "$root/etc/systemd/system/ssh.service.d"
printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' > "$root/etc/systemd/system/ssh.service.d/host-keys.conf"
echo "autoglm-node" > "$root/etc/hostname"
: > "$root/etc/machine-id"
apt-get -o RootDir="$root" clean 2>/dev/null || true
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
tar -C "$root" -c . | docker import -c 'CMD ["/lib/systemd/systemd"]' -c 'ENV container=docker' - "$tag" >/dev/null
echo "built $tag"
