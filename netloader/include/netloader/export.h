#pragma once

// Symbols of libnetloader are hidden unless marked with NETLOADER_EXPORT.
#define NETLOADER_EXPORT __attribute__((visibility("default")))
