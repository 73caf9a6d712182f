#include "transport/host.h"

#include <strings.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "core/env.h"
#include "core/error.h"

namespace agentcomm::transport {

namespace {
std::string readFileTrim(const char* path) {
  std::ifstream in(path);
  std::string s;
  std::getline(in, s);
  return s;
}

bool shmEnabledHere() { return envFlag("AGENTCOMM_SHM", true); }
}  // namespace

std::string hostId() {
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  char ns[256] = {0};
  ssize_t n = ::readlink("/proc/self/ns/net", ns, sizeof(ns) - 1);
  if (n < 0) ns[0] = 0;
  return strCat(host, "/", readFileTrim("/proc/sys/kernel/random/boot_id"), "/", ns);
}

std::vector<int> HostMap::membersOf(int rank) const {
  std::vector<int> out;
  for (int r = 0; r < static_cast<int>(leaderOf.size()); ++r)
    if (leaderOf[r] == leaderOf[rank]) out.push_back(r);
  return out;
}

std::vector<int> HostMap::leaders() const {
  std::vector<int> out;
  for (int r = 0; r < static_cast<int>(leaderOf.size()); ++r)
    if (leaderOf[r] == r) out.push_back(r);
  return out;
}

bool HostMap::singleHost() const {
  return std::all_of(leaderOf.begin(), leaderOf.end(), [](int l) { return l == 0; });
}

HostMap exchangeHosts(Store& store, int rank, int size, const std::string& keyPrefix,
                      std::chrono::milliseconds timeout) {
  // "<flag> <host id>": the flag is 0 where AGENTCOMM_SHM=0.
  store.set(strCat(keyPrefix, "host/", rank), toBytes(strCat(shmEnabledHere() ? 1 : 0, " ", hostId())));
  std::vector<std::string> ids(size);
  HostMap map;
  std::vector<std::string> keys;
  for (int r = 0; r < size; ++r) keys.push_back(strCat(keyPrefix, "host/", r));
  const auto values = store.multiGet(keys, timeout);
  for (int r = 0; r < size; ++r) {
    const std::string v = fromBytes(values[r]);
    if (v.rfind("0 ", 0) == 0) map.shmAllowed = false;
    ids[r] = v.size() > 2 ? v.substr(2) : v;
  }
  map.leaderOf.resize(size);
  for (int r = 0; r < size; ++r) {
    map.leaderOf[r] = r;
    if (!map.shmAllowed) continue;  // every rank its own "host": no domains, no hierarchy
    for (int q = 0; q < r; ++q) {
      if (ids[q] == ids[r]) {
        map.leaderOf[r] = q;
        break;
      }
    }
  }
  return map;
}

}  // namespace agentcomm::transport
