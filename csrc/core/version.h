#pragma once
// The one version constant of the native code (CMakeLists.txt's project
// VERSION, passed as AGENTCOMM_VERSION; pyproject.toml must agree: a test checks it).
#ifndef AGENTCOMM_VERSION
#error "AGENTCOMM_VERSION is set by CMakeLists.txt from the project's VERSION"
#endif

namespace agentcomm {
inline constexpr const char* kVersion = AGENTCOMM_VERSION;
}  // namespace agentcomm
