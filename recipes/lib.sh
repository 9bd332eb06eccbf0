# Sourced by the recipes. A recipe writes one folder; an existing one is kept unless FORCE=1 says
# to replace it, so a finished reproduction is never lost to a rerun by accident.
new_output_dir() {
  if [ -e "$1" ] && [ "${FORCE:-0}" != 1 ]; then
    echo "error: $1 exists; move it away, or rerun with FORCE=1 to replace it" >&2
    exit 2
  fi
  rm -rf "$1" && mkdir -p "$1"
}
