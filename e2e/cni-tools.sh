# Sourced by kernel-tests.sh and kernel-bench.sh (HERE set to e2e/): exports WEFT_CNITOOL and
# WEFT_CNI_PLUGINS, the paths of libcni's cnitool and of the reference plugins that `make tools`
# (e2e/tools.sh) built, and fails when they are not built.
tools=$(WEFT_TOOLS_NO_BUILD=1 "$HERE/tools.sh" cnitool cni-plugins) ||
  { echo "$(basename "$0"): cnitool is not built: run make tools (e2e/tools.sh)" >&2; exit 1; }
WEFT_CNITOOL=$(sed -n 's/^cnitool=//p' <<<"$tools")
WEFT_CNI_PLUGINS=$(sed -n 's/^cni-plugins=//p' <<<"$tools")
export WEFT_CNITOOL WEFT_CNI_PLUGINS
