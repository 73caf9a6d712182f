#pragma once
// Environment knobs (AGENTCOMM_*), parsed one way everywhere.
#include <cstddef>

namespace agentcomm {

// Unset or empty: fallback; "0", "false", "off" (any case): false; anything else: true.
bool envFlag(const char* name, bool fallback);
// Unset or empty: fallback; otherwise a positive decimal number, or InvalidArgument naming the variable.
size_t envSize(const char* name, size_t fallback);
// Unset or empty: nullptr; otherwise the raw value, for settings whose words their owner parses
// (and rejects with InvalidArgument naming the variable).
const char* envText(const char* name);

}  // namespace agentcomm
