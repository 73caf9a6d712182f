#include "algorithms/context.h"

#include <memory>

#include "core/error.h"

namespace agentcomm::algorithms {

uint8_t* Context::scratch(int slot, size_t bytes) {
  struct Buffer {
    std::unique_ptr<uint8_t[]> data;
    size_t size = 0;
  };
  thread_local Buffer buffers[4];
  Buffer& b = buffers[slot];
  if (b.size < bytes) {
    b.data.reset(new uint8_t[bytes]);  // uninitialised on purpose
    b.size = bytes;
  }
  return b.data.get();
}

void Context::send(int peer, uint64_t tag, const void* data, size_t nbytes) const {
  transport::Header h;
  h.kind = static_cast<uint8_t>(transport::MsgKind::Collective);
  h.collective = static_cast<uint8_t>(collective);
  h.dtype = static_cast<uint8_t>(dtype);
  h.op = wireOp();
  h.seq = seq;
  h.tag = tag;
  h.count = signature;
  h.nbytes = nbytes;
  transport.send(globalRank(peer), h, data, deadline);
}

RecvHandle Context::postRecv(int peer, uint64_t tag, void* data, size_t nbytes) const {
  transport::RecvSpec spec;
  spec.kind = transport::MsgKind::Collective;
  spec.src = globalRank(peer);
  spec.seq = seq;
  spec.tag = tag;
  spec.buffer = data;
  spec.nbytes = nbytes;
  spec.collective = static_cast<uint8_t>(collective);
  spec.dtype = static_cast<uint8_t>(dtype);
  spec.op = wireOp();
  spec.count = signature;
  spec.describe = describeSignature;
  return transport.post(std::move(spec));
}

void Context::wait(const RecvHandle& h) const {
  transport.wait(h, deadline,
                 strCat("in ", collectiveName(collective), " (sequence number ", seq,
                        ") waiting for rank ", h->spec().src));
}

namespace {
thread_local const char* tlAlgorithm = "";
}

void noteAlgorithm(const char* name) { tlAlgorithm = name; }

const char* takeAlgorithm() {
  const char* name = tlAlgorithm;
  tlAlgorithm = "";
  return name;
}

}  // namespace agentcomm::algorithms
