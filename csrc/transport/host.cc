#include "transport/host.h"

#include <unistd.h>

#include <fstream>

#include "core/error.h"

namespace agentcomm::transport {

namespace {
std::string readFileTrim(const char* path) {
  std::ifstream in(path);
  std::string s;
  std::getline(in, s);
  return s;
}
}  // namespace

std::string hostId() {
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  char ns[256] = {0};
  ssize_t n = ::readlink("/proc/self/ns/net", ns, sizeof(ns) - 1);
  if (n < 0) ns[0] = 0;
  return strCat(host, "/", readFileTrim("/proc/sys/kernel/random/boot_id"), "/", ns);
}

}  // namespace agentcomm::transport
