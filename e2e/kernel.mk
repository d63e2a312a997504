# Kernel datapath tests: built on the host, run inside one QEMU guest with Debian's kernel.
# Included by the top-level Makefile.

KERNEL_TEST_ARGS ?=

kernel-test: tools
	e2e/kernel-tests.sh $(KERNEL_TEST_ARGS)

kernel-bench: tools
	e2e/kernel-bench.sh
