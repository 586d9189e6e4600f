#!/usr/bin/env bash
# Builds a local Docker image from host binaries and every shared library
# they load, with a non-root `agent` user (uid 1000). No registry needed.
#
#   scripts/image-from-binaries.sh TAG PROGRAM...
#
# PROGRAM is a name on PATH or a path; each lands in /bin. /bin/sh is always
# included. Example: scripts/image-from-binaries.sh bot-bottle/quickstart-agent curl cat env
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 TAG PROGRAM..." >&2; exit 2; }
tag=$1; shift
command -v docker >/dev/null || { echo "$0: docker is not installed" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,etc,tmp,home/agent,workspace,etc/ssl/certs,root}
chmod 1777 "$root/tmp"

copy() { # copy FILE to the same path (or DEST) inside the rootfs, following links
  local src=$1 dest=${2:-$1}
  mkdir -p "$root$(dirname "$dest")"
  cp -L "$src" "$root$dest"
}
add_program() {
  local path
  # type -P: the executable file on PATH, never a shell builtin (true, echo).
  if [ -x "$1" ] && [ "${1#*/}" != "$1" ]; then path=$1; else path=$(type -P "$1" 2>/dev/null || true); fi
  [ -n "$path" ] && [ -x "$path" ] || { echo "$0: $1 not found on this host" >&2; exit 1; }
  copy "$path" "/bin/$(basename "$1")"
  # Every library the loader resolves, plus the loader itself.
  ldd "$path" 2>/dev/null | awk '/=> \// {print $3} /^[[:space:]]*\// {print $1}' | while read -r lib; do
    [ -f "$lib" ] && copy "$lib"
  done
}
add_program sh
for p in "$@"; do add_program "$p"; done

printf 'root:x:0:0:root:/root:/bin/sh\nagent:x:1000:1000:agent:/home/agent:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\nagent:x:1000:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
chown 1000:1000 "$root/home/agent" "$root/workspace"

tar -C "$root" --numeric-owner -c . | docker import --change 'USER agent' --change 'WORKDIR /workspace' --change 'ENV PATH=/bin' - "$tag" >/dev/null
echo "built $tag"
