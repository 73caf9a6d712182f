#include "core/env.h"

#include <strings.h>

#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace agentcomm {

bool envFlag(const char* name, bool fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == 0) return fallback;
  return !(std::strcmp(v, "0") == 0 || strcasecmp(v, "false") == 0 || strcasecmp(v, "off") == 0);
}

size_t envSize(const char* name, size_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == 0) return fallback;
  char* end = nullptr;
  const unsigned long long x = std::strtoull(v, &end, 10);
  AC_CHECK(end != v && *end == 0 && x > 0, InvalidArgument, name, "=", v, " is not a positive number");
  return static_cast<size_t>(x);
}

const char* envText(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr || *v == 0 ? nullptr : v;
}

}  // namespace agentcomm
