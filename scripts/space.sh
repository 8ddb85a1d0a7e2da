#!/usr/bin/env bash
# Prepare a Hugging Face Space (Docker SDK) from this repository's last commit, in another folder.
#
# Spaces refuse plain files over 10 MB, and this repository keeps its checkpoints as plain files (so that a
# clone without git-lfs gets real weights). The copy made here is a fresh git repository in which git-lfs tracks
# every binary file (checkpoints, PNGs) and every file over 10 MB - in that copy only; this repository is left as
# it is.
#
# Usage: bash scripts/space.sh DEST      DEST: a new or empty folder outside this repository
# Then push it to a Space created with the Docker SDK (the README's "## Docker" section says how).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
fail() { echo "error: $*" >&2; exit 1; }

[ $# = 1 ] || { echo "usage: bash scripts/space.sh DEST (a new or empty folder outside this repository)" >&2; exit 2; }
dest=$1
limit=$((10 * 1000 * 1000))  # Hugging Face's limit for plain files: 10 MB

dest=$(realpath -m -- "$dest")
case $dest/ in "$repo"/*) fail "$dest is inside the repository; name a folder outside it" ;; esac
if [ -e "$dest" ] && { [ ! -d "$dest" ] || [ -n "$(ls -A "$dest")" ]; }; then
  fail "$dest is not an empty folder; name a new or empty one"
fi

if ! git lfs version >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[space] installing git-lfs (apt-get)"
    bash "$repo/scripts/apt_install.sh" git-lfs \
      || fail "apt-get could not install git-lfs"
  else
    fail "git-lfs is not installed (Debian: apt-get install git-lfs)"
  fi
fi

commit=$(git -C "$repo" rev-parse HEAD)
[ -z "$(git -C "$repo" status --porcelain --untracked-files=no)" ] \
  || echo "[space] note: uncommitted changes are not in the copy; it holds commit ${commit:0:12}"
mkdir -p "$dest"
git -C "$repo" archive --format=tar HEAD | tar -x -C "$dest"
# The Hub keeps no symbolic links: the copy leaves them out (examples/ links to attnviz/examples/, which the app
# reads as package data).
find "$dest" -type l -delete

cd "$dest"
git init --quiet --initial-branch=main
git lfs install --local >/dev/null  # hooks in this copy only, no change to the user's git configuration
# The Hub also refuses binary files of any size that are not in LFS (PNGs included): git-lfs takes every file git
# sees as binary (by extension: *.png, *.safetensors, ...) and every file over 10 MB.
git add --all --intent-to-add
binary=$(git diff --numstat | awk -F'\t' '$1 == "-" { print $3 }')
git read-tree --empty
patterns=$(printf '%s\n' "$binary" | sed -n 's|^.*/\{0,1\}[^/]*\.\([A-Za-z0-9]*\)$|*.\1|p' | sort -u)
for pattern in $patterns; do git lfs track "$pattern" >/dev/null; done
while IFS= read -r file; do
  [ -n "$file" ] || continue
  case $file in *.*) ;; *) git lfs track --filename "$file" >/dev/null ;; esac
done <<<"$binary"
while IFS= read -r -d '' file; do
  file=${file#./}
  [ "$(git check-attr filter -- "$file" | sed 's/.*: //')" = lfs ] || git lfs track --filename "$file" >/dev/null
done < <(find . -path ./.git -prune -o -type f -size +"${limit}c" -print0)
git add --all
name=$(git -C "$repo" config user.name || echo attnviz)
email=$(git -C "$repo" config user.email || echo attnviz@localhost)
git -c user.name="$name" -c user.email="$email" commit --quiet -m "attnviz ${commit:0:12} as a Hugging Face Space"

big=$(find . -path ./.git -prune -o -type f -size +"${limit}c" -print | sed 's|^\./||')
lfs=$(git lfs ls-files --name-only | sort)
missing=$(comm -23 <(printf '%s\n' "$big" "$binary" | sed '/^$/d' | sort -u) <(printf '%s\n' "$lfs"))
[ -z "$missing" ] || fail "not tracked by git-lfs: $missing"
echo "[space] $dest: commit ${commit:0:12} of $repo;" \
     "$(printf '%s\n' "$lfs" | sed '/^$/d' | wc -l) files in git-lfs, the largest:"
git lfs ls-files --size | grep -E '\(([0-9.]+ MB|[0-9.]+ GB)\)' | sed 's/^/[space]   /' || true
echo "[space] push it: cd $dest && git remote add space https://huggingface.co/spaces/USER/SPACE && git push --force space main"
