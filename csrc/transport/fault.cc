#include "transport/fault.h"

#include <cerrno>
#include <cstdlib>

#include "core/env.h"
#include "core/error.h"

namespace agentcomm::transport {

namespace {

thread_local bool tlCorruptNext = false;

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (true) {
    const size_t end = s.find(sep, pos);
    out.push_back(s.substr(pos, end == std::string::npos ? std::string::npos : end - pos));
    if (end == std::string::npos) return out;
    pos = end + 1;
  }
}

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

}  // namespace

const char* faultKindName(Fault::Kind k) {
  switch (k) {
    case Fault::Kind::Drop: return "drop";
    case Fault::Kind::Delay: return "delay";
    case Fault::Kind::Corrupt: return "corrupt";
    case Fault::Kind::Stall: return "stall";
  }
  return "?";
}

FaultPlan FaultPlan::parse(const std::string& spec, const char* variable) {
  FaultPlan plan;
  for (const std::string& rawItem : split(spec, ';')) {
    const std::string item = trim(rawItem);
    if (item.empty()) continue;
    auto bad = [&](const std::string& why) {
      return InvalidArgument(strCat(variable, "=", spec, ": '", item, "': ", why,
                                    " (expected kind:key=value,... with kind drop, delay, corrupt or stall; keys "
                                    "rank, op, ms, group)"));
    };
    const size_t colon = item.find(':');
    if (colon == std::string::npos) throw bad("no ':' after the kind");
    const std::string kind = trim(item.substr(0, colon));
    Fault f;
    if (kind == "drop") {
      f.kind = Fault::Kind::Drop;
    } else if (kind == "delay") {
      f.kind = Fault::Kind::Delay;
    } else if (kind == "corrupt") {
      f.kind = Fault::Kind::Corrupt;
    } else if (kind == "stall") {
      f.kind = Fault::Kind::Stall;
    } else {
      throw bad(strCat("unknown kind '", kind, "'"));
    }
    for (const std::string& rawKv : split(item.substr(colon + 1), ',')) {
      const std::string kv = trim(rawKv);
      const size_t eq = kv.find('=');
      if (eq == std::string::npos) throw bad(strCat("'", kv, "' is not key=value"));
      const std::string key = trim(kv.substr(0, eq));
      const std::string value = trim(kv.substr(eq + 1));
      if (key == "group") {
        f.group = value;
        continue;
      }
      if (key != "rank" && key != "op" && key != "ms") throw bad(strCat("unknown key '", key, "'"));
      char* end = nullptr;
      errno = 0;
      const long long n = std::strtoll(value.c_str(), &end, 10);
      if (value.empty() || *end != 0 || errno != 0 || n < 0) throw bad(strCat(key, "=", value, " is not a number"));
      if (key == "rank") {
        f.rank = static_cast<int>(n);
      } else if (key == "op") {
        if (n == 0) throw bad("op counts from 1");
        f.op = static_cast<uint64_t>(n);
      } else if (key == "ms") {
        f.ms = n;
      } else {
        throw bad(strCat("unknown key '", key, "'"));
      }
    }
    if (f.rank < 0) throw bad("rank=R is required");
    if (f.kind == Fault::Kind::Delay && f.ms <= 0) throw bad("delay needs ms=M");
    if (f.kind != Fault::Kind::Delay && f.op == 0) throw bad(strCat(kind, " needs op=N"));
    plan.faults_.push_back(std::move(f));
  }
  return plan;
}

FaultPlan FaultPlan::fromEnv() {
  const char* v = envText("AGENTCOMM_FAULT");
  return v == nullptr ? FaultPlan{} : parse(v);
}

std::vector<Fault> FaultPlan::at(const std::string& group, int rank, uint64_t op) const {
  std::vector<Fault> out;
  for (const Fault& f : faults_) {
    if (f.rank != rank || (f.op != 0 && f.op != op) || (!f.group.empty() && f.group != group)) continue;
    out.push_back(f);
  }
  return out;
}

void armCorruption() { tlCorruptNext = true; }

bool takeCorruption() {
  const bool armed = tlCorruptNext;
  tlCorruptNext = false;
  return armed;
}

}  // namespace agentcomm::transport
