/*
 * The libFuzzer entry point every fuzz target defines. Built with
 * -Dfuzzing=true, libFuzzer's own main() drives it; otherwise fuzz-main.c
 * does, over the seed corpus and deterministic mutations of it, so that
 * `meson test --suite fuzz` replays the corpus under every build.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
