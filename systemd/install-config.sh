#!/bin/sh
# meson install script: installs the example config as the config file only
# if there is none, so that a reinstall never overwrites an edited one.
# $1: the example, $2: the config file's absolute path ($DESTDIR prepended).
set -eu
src=$1
dest=${DESTDIR:-}$2
if [ -e "$dest" ]; then
        echo "kvdrive: keeping $dest (the example is in the manual, kvdrived.conf(5))"
        exit 0
fi
mkdir -p "$(dirname "$dest")"
cp "$src" "$dest"
chmod 0644 "$dest"
echo "kvdrive: installed $dest"
