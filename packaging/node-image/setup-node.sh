#!/usr/bin/env bash
# Provision a Debian 12 node image with kelson as kubelet's container runtime. Run as root in
# the image build (Packer shell provisioner, cloud-init runcmd, or a chroot with systemd
# installed): packaging/node-image/setup-node.sh <kelson_*.deb> [kubernetes minor, e.g. v1.31]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
deb="${1:?usage: setup-node.sh kelson_<version>_amd64.deb [v1.31]}"
k8s="${2:-v1.31}"
export DEBIAN_FRONTEND=noninteractive

# Kernel: overlayfs for root filesystems, bridge netfilter and forwarding for CNI.
cat > /etc/modules-load.d/kelson.conf <<'MODULES'
overlay
br_netfilter
MODULES
cat > /etc/sysctl.d/90-kelson.conf <<'SYSCTL'
net.ipv4.ip_forward = 1
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
# Enough inotify instances for kubelet and many pods.
fs.inotify.max_user_instances = 8192
SYSCTL

apt-get update -qq
apt-get install -y -qq --no-install-recommends ca-certificates curl gpg iptables \
  containernetworking-plugins runc
# kelson itself (kelsond, kelson-shim, kelson-shim-engine, kelson-init, kelson.service).
apt-get install -y -qq "$deb"
install -m 0644 "$here/kelson-config.toml" /etc/kelson/config.toml

# kubelet and crictl from the Kubernetes project's repository (Debian does not ship them).
mkdir -p /etc/apt/keyrings
curl -fsSL "https://pkgs.k8s.io/core:/stable:/${k8s}/deb/Release.key" |
  gpg --dearmor -o /etc/apt/keyrings/kubernetes-apt-keyring.gpg
echo "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/${k8s}/deb/ /" \
  > /etc/apt/sources.list.d/kubernetes.list
apt-get update -qq
apt-get install -y -qq kubelet kubeadm cri-tools
apt-mark hold kubelet kubeadm

install -D -m 0644 "$here/kubelet-config.yaml" /var/lib/kubelet/config.yaml
# kubelet starts after kelson and is restarted with it.
install -D -m 0644 /dev/stdin /etc/systemd/system/kubelet.service.d/10-kelson.conf <<'DROPIN'
[Unit]
After=kelson.service
Wants=kelson.service
DROPIN
cat > /etc/crictl.yaml <<'CRICTL'
runtime-endpoint: unix:///run/kelson/kelson.sock
image-endpoint: unix:///run/kelson/kelson.sock
CRICTL

systemctl enable kelson.service kubelet.service
echo "node image: kelson $(dpkg-query -W -f='${Version}' kelson), kubelet $(kubelet --version)"
