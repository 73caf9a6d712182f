// Point-to-point ops of AgentBackend. Sends run on the scheduler's send lane
// (a small one inline when the lane is idle); receives are posted at once and
// complete on the reader that delivered them or on the completion lane. The
// rendezvous protocol of large sends inside a host is the communicator's.
#include <c10/util/Exception.h>

#include "core/error.h"
#include "torch/backend.h"

namespace agentcomm::torch_adapter {

c10::intrusive_ptr<c10d::Work> AgentBackend::send(Tensors& tensors, int dstRank, int tag) {
  return onHost("send", [&](const StagePtr& stage, Tensors& tensors) -> c10::intrusive_ptr<c10d::Work> {
    TORCH_CHECK_VALUE(tensors.size() == 1, "agentcomm send: expected one tensor, got ", tensors.size());
    TORCH_CHECK_VALUE(dstRank >= 0 && dstRank < size_ && dstRank != rank_, "agentcomm send: bad destination rank ",
                      dstRank, " (this is rank ", rank_, " of ", size_, ")");
    View v = moveView(tensors[0], "send");
    // As with every backend, the caller must not modify the tensor before the work completes.
    at::Tensor buf = contiguousBuffer(tensors[0]);
    if (stage) stage->setOutputs({});  // tensors[0] is a host mirror
    auto work = c10::make_intrusive<AgentWork>(rank_, c10d::OpType::SEND, "agentcomm:send",
                                               Tensors{stage ? stage->original(tensors[0]) : tensors[0]}, timeout_,
                                               stage);
    work->record(comm_->recorder(), 0, true, dstRank);
    const size_t nbytes = static_cast<size_t>(buf.nbytes());
    const uint32_t utag = static_cast<uint32_t>(tag);
    auto completeWork = [work](std::exception_ptr e) { work->complete(e); };
    // A large host send to a rank of this host goes by rendezvous (the
    // communicator's offer); the work completes with the receiver's answer (the
    // tensor is read until then), not when the offer is out.
    if (!stage && comm_->offersTo(dstRank, nbytes)) {
      auto sendOffer = comm_->offer(dstRank, utag, buf.data_ptr(), nbytes, v.dt, v.count,
                                    [this, work, buf](const std::string& error) {
                                      (void)buf;  // read by the receiver until it answers
                                      std::exception_ptr eptr = error.empty() ? nullptr : backendError(error);
                                      if (!work->completeWithoutCallbacks(eptr))
                                        scheduler_->completion(ScheduledOp{{}, [work, eptr](std::exception_ptr) {
                                                                             work->complete(eptr);
                                                                           }});
                                    });
      // No complete: a failed offer aborted the group, which fails the answer's receive.
      scheduler_->send(ScheduledOp{[this, work, sendOffer] { return execute(*work, sendOffer, timeout_); }, {}});
      return work;
    }
    auto run = [this, dstRank, utag, buf, nbytes, v, stage](Deadline d) {
      if (stage) stage->copyIn();
      comm_->send(dstRank, utag, buf.data_ptr(), nbytes, v.dt, v.count, d);
      if (stage) stage->copyOut();
    };
    // A small host send goes out from the calling thread when the lane is idle
    // and no other thread is sending to that peer (one thread hand-off less;
    // the socket takes it without waiting for the peer, whose reader drains
    // it; it never queues behind a large message). It completes before the
    // caller can attach a callback.
    const auto inlineSend = [&] {
      bool sent = false;
      std::exception_ptr eptr = execute(*work, [&](Deadline d) {
        sent = comm_->trySend(dstRank, utag, buf.data_ptr(), nbytes, v.dt, v.count, d);
      }, timeout_);
      if (eptr || sent) work->complete(eptr);
      return eptr || sent;
    };
    if (stage || nbytes > kInlineMaxBytes || !scheduler_->sendInlineIfIdle(inlineSend))
      scheduler_->send(ScheduledOp{[this, work, run] { return execute(*work, run, timeout_); }, completeWork});
    return work;
  }, tensors);
}

c10::intrusive_ptr<AgentWork> AgentBackend::postRecv(Tensors& tensors, int srcRank, int tag) {
  auto work = onHost("recv", [&](const StagePtr& stage, Tensors& tensors) -> c10::intrusive_ptr<c10d::Work> {
    TORCH_CHECK_VALUE(tensors.size() == 1, "agentcomm recv: expected one tensor, got ", tensors.size());
    View v = moveView(tensors[0], "recv");
    const at::Tensor t = tensors[0];
    at::Tensor buf = contiguousBuffer(t);
    if (stage) stage->setOutputs({t});  // t is a host mirror, copied up on arrival
    auto work = c10::make_intrusive<AgentWork>(rank_, srcRank >= 0 ? c10d::OpType::RECV : c10d::OpType::RECVANYSOURCE,
                                               "agentcomm:recv", Tensors{stage ? stage->original(t) : t}, timeout_,
                                               stage);
    work->record(comm_->recorder(), 0, true, srcRank);
    work->recordStarted();  // posted: it waits for its message from now on
    algorithms::Communicator* comm = comm_.get();
    work->onWaitTimeout = [comm](const std::string& why) { comm->abort(why); };
    auto onComplete = [this, work, t, buf, stage](const transport::RecvSlot& slot) {
      const bool failed = slot.failed();
      const std::string error = slot.error();
      work->setSourceRank(slot.source());
      // Received in place with nobody holding the future: finish here, on the
      // reader (the waiter wakes one hand-off sooner; no callback runs here).
      if (!failed && !stage && t.data_ptr() == buf.data_ptr() && work->completeWithoutCallbacks(nullptr)) return;
      // Copy-back and future callbacks run on the completion lane, not on the
      // transport's reader thread.
      scheduler_->completion(ScheduledOp{{}, [work, t, buf, failed, error, stage](std::exception_ptr shutdown) {
                                           if (shutdown || failed) {
                                             work->complete(shutdown ? shutdown : backendError(error));
                                             return;
                                           }
                                           copyBack(t, buf);
                                           if (stage) {
                                             stage->waitCaller();
                                             stage->copyOut();
                                           }
                                           work->complete(nullptr);
                                         }});
    };
    comm_->postRecv(srcRank, static_cast<uint32_t>(tag), buf.data_ptr(), static_cast<size_t>(buf.nbytes()), v.dt,
                    v.count, std::move(onComplete));
    return work;
  }, tensors);
  return c10::static_intrusive_pointer_cast<AgentWork>(work);
}

c10::intrusive_ptr<c10d::Work> AgentBackend::recv(Tensors& tensors, int srcRank, int tag) {
  TORCH_CHECK_VALUE(srcRank >= 0 && srcRank < size_ && srcRank != rank_, "agentcomm recv: bad source rank ", srcRank,
                    " (this is rank ", rank_, " of ", size_, ")");
  return postRecv(tensors, srcRank, tag);
}

c10::intrusive_ptr<c10d::Work> AgentBackend::recvAnysource(Tensors& tensors, int tag) {
  return postRecv(tensors, -1, tag);
}

}  // namespace agentcomm::torch_adapter
