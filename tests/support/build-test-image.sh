#!/usr/bin/env bash
# Build the local Docker test image `dployr-test/busybox:latest` from Debian's static busybox.
# No registry can be reached in CI, so the tests' images all start FROM this one.
# The image has /bin/sh and the busybox applets (httpd serves HTTP), and a /www/index.html.
set -euo pipefail
IMAGE=${1:-dployr-test/busybox:latest}
BUSYBOX=${BUSYBOX:-/bin/busybox}
[ -x "$BUSYBOX" ] || { echo "build-test-image: busybox-static is not installed" >&2; exit 1; }
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  exit 0
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,tmp,www,etc,proc,sys,dev,root}
cp "$BUSYBOX" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf /bin/busybox "$root/bin/$applet"
done
echo 'hello from dployr-test' > "$root/www/index.html"
echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
echo 'root:x:0:' > "$root/etc/group"
chmod 1777 "$root/tmp"
tar -C "$root" -c . | docker import \
  -c 'ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin' \
  -c 'CMD ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]' \
  -c 'EXPOSE 8080' - "$IMAGE" >/dev/null
echo "built $IMAGE"
