#pragma once
// Errors raised by the core. The torch adapter maps each kind to the matching
// Python exception (ValueError, TypeError, DistBackendError, timeout).
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>

namespace agentcomm {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Caller passed something unsupported or inconsistent (bad dtype, bad op, size).
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

// Ranks disagreed about a collective (shape, dtype, op, or collective kind).
class MismatchError : public Error {
 public:
  using Error::Error;
};

// A deadline passed.
class TimeoutError : public Error {
 public:
  using Error::Error;
};

// A peer died, a connection broke, or the communicator was aborted.
class CommError : public Error {
 public:
  using Error::Error;
};

template <typename... Args>
std::string strCat(const Args&... args) {
  std::ostringstream ss;
  (ss << ... << args);
  return ss.str();
}

// strerror(err) and the number: "Connection refused (errno 111)".
inline std::string errnoText(int err) { return strCat(std::strerror(err), " (errno ", err, ")"); }

}  // namespace agentcomm

#define AC_CHECK(cond, ErrType, ...)                                       \
  do {                                                                     \
    if (!(cond)) throw ::agentcomm::ErrType(::agentcomm::strCat(__VA_ARGS__)); \
  } while (0)
