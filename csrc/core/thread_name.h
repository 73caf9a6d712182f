#pragma once
// Names the calling thread (as top -H, /proc/PID/task/*/comm and debuggers
// show it): agentcomm's threads say what they are, as Gloo's do.
#include <pthread.h>

namespace agentcomm {

// name: at most 15 characters (longer ones are cut by the kernel's limit).
inline void nameThisThread(const char* name) {
  char cut[16] = {};
  for (int i = 0; i < 15 && name[i] != '\0'; ++i) cut[i] = name[i];
  pthread_setname_np(pthread_self(), cut);
}

}  // namespace agentcomm
