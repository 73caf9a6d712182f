#include "transport/mailbox.h"

#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "core/reduce_op.h"

namespace agentcomm::transport {

std::string Mailbox::checkMatch(const RecvSpec& spec, int src, const Header& h, bool compareBytes) const {
  auto describe = [&spec](const Signature& sig, uint64_t nbytes) {
    if (spec.describe != nullptr) return spec.describe(sig, nbytes);
    return strCat("collective #", int(sig.collective), " of ", sig.count, " elements of dtype #", int(sig.dtype),
                  ", op #", int(sig.op), ", ", nbytes, " bytes in this message");
  };
  if (spec.kind == MsgKind::P2P) {
    if (h.dtype != spec.dtype || (compareBytes && h.nbytes != spec.nbytes)) {
      return strCat("agentcomm: send/recv mismatch (tag ", spec.tag, "): rank ", src, " sent ", h.count,
                    " elements of ", dataTypeName(static_cast<DataType>(h.dtype)), " (", h.nbytes,
                    " bytes) but rank ", rank_, " posted a receive of ", spec.count, " elements of ",
                    dataTypeName(static_cast<DataType>(spec.dtype)), " (", spec.nbytes,
                    " bytes). Sender and receiver tensors must have the same dtype and number of elements.");
    }
    return {};
  }
  const Signature theirs{h.collective, h.dtype, h.op, h.count};
  const Signature mine{spec.collective, spec.dtype, spec.op, spec.count};
  if (theirs.collective != mine.collective || theirs.dtype != mine.dtype || theirs.op != mine.op ||
      theirs.count != mine.count || (compareBytes && h.nbytes != spec.nbytes)) {
    return strCat("agentcomm: collective mismatch at sequence number ", spec.seq, ": rank ", src, " called ",
                  describe(theirs, h.nbytes), "; rank ", rank_, " called ", describe(mine, spec.nbytes),
                  ". Every rank must call the same collectives in the same order with matching shapes, dtypes "
                  "and reduce ops.");
  }
  return {};
}

void Mailbox::failLocked(const RecvHandle& slot, RecvSlot::FailKind kind, const std::string& why,
                         std::vector<RecvHandle>& completed) {
  slot->state_ = RecvSlot::State::Failed;
  slot->failKind_ = kind;
  slot->error_ = why;
  slot->cv_.notify_all();
  completed.push_back(slot);
}

void Mailbox::runCallbacks(std::vector<RecvHandle>& completed) {
  for (auto& s : completed) {
    if (s->spec_.onComplete) {
      auto cb = std::move(s->spec_.onComplete);
      s->spec_.onComplete = nullptr;
      cb(*s);
    }
  }
}

void Mailbox::finishLocked(const RecvHandle& slot, bool ok, const std::string& why,
                           std::vector<RecvHandle>& completed) {
  if (!ok) return failLocked(slot, RecvSlot::FailKind::Comm, why, completed);
  slot->state_ = RecvSlot::State::Done;
  slot->cv_.notify_all();
  completed.push_back(slot);
}

RecvHandle Mailbox::settleParkedLocked(Unexpected& m, bool ok, const std::string& why,
                                       std::vector<RecvHandle>& completed) {
  m.complete = ok;
  m.failed = !ok;
  if (!m.claimedBy) return nullptr;
  if (ok) return m.claimedBy;  // still Delivering: copyParked finishes it
  failLocked(m.claimedBy, RecvSlot::FailKind::Comm, why, completed);
  return nullptr;
}

void Mailbox::copyParked(const RecvHandle& slot, const Unexpected& m, std::vector<RecvHandle>& completed) {
  // The payload is complete and nobody else references the slot's buffer.
  if (!m.data.empty()) std::memcpy(slot->spec_.buffer, m.data.data(), m.data.size());
  std::lock_guard<std::mutex> lock(mutex_);
  finishLocked(slot, true, {}, completed);
}

RecvHandle Mailbox::post(RecvSpec spec) {
  RecvHandle slot(new RecvSlot(std::move(spec)));
  std::vector<RecvHandle> completed;
  std::shared_ptr<Unexpected> ready;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const RecvSpec& sp = slot->spec_;
    slot->order_ = nextOrder_++;
    if (abortReason_) {
      failLocked(slot, RecvSlot::FailKind::Comm, *abortReason_, completed);
    } else {
      // Look for a parked message: the exact source, or for any-source the earliest arrival.
      std::deque<std::shared_ptr<Unexpected>>* queue = nullptr;
      Key foundKey;
      if (sp.src >= 0) {
        auto it = unexpected_.find(Key{static_cast<uint8_t>(sp.kind), sp.src, sp.seq, sp.tag});
        if (it != unexpected_.end() && !it->second.empty()) {
          queue = &it->second;
          foundKey = it->first;
        }
      } else {
        for (auto& [key, q] : unexpected_) {
          if (std::get<0>(key) == static_cast<uint8_t>(MsgKind::P2P) && std::get<3>(key) == sp.tag && !q.empty() &&
              (queue == nullptr || q.front()->order < queue->front()->order)) {
            queue = &q;
            foundKey = key;
          }
        }
      }
      if (queue != nullptr) {
        auto msg = queue->front();
        queue->pop_front();
        if (queue->empty()) unexpected_.erase(foundKey);
        slot->source_ = msg->src;
        std::string bad = checkMatch(sp, msg->src, msg->header);
        if (!bad.empty()) {
          failLocked(slot, RecvSlot::FailKind::Mismatch, bad, completed);
        } else if (msg->failed) {
          failLocked(slot, RecvSlot::FailKind::Comm, "agentcomm: connection failed while receiving", completed);
        } else if (msg->complete) {
          ready = msg;
          slot->state_ = RecvSlot::State::Delivering;
        } else {
          msg->claimedBy = slot;
          slot->state_ = RecvSlot::State::Delivering;
        }
      } else if (sp.src >= 0) {
        // Any parked message of the same collective (same source and sequence
        // number, another tag) must agree on what the collective is: a rank
        // running a different collective is reported now, not at the timeout.
        std::string bad;
        if (sp.kind == MsgKind::Collective) {
          auto it = unexpected_.lower_bound(Key{static_cast<uint8_t>(sp.kind), sp.src, sp.seq, 0});
          if (it != unexpected_.end() && std::get<0>(it->first) == static_cast<uint8_t>(sp.kind) &&
              std::get<1>(it->first) == sp.src && std::get<2>(it->first) == sp.seq && !it->second.empty()) {
            bad = checkMatch(sp, sp.src, it->second.front()->header, false);
          }
        }
        if (!bad.empty()) {
          failLocked(slot, RecvSlot::FailKind::Mismatch, bad, completed);
        } else if (auto dead = deadPeers_.find(sp.src); dead != deadPeers_.end()) {
          failLocked(slot, RecvSlot::FailKind::Comm, dead->second, completed);  // nothing more will come
        } else {
          posted_[Key{static_cast<uint8_t>(sp.kind), sp.src, sp.seq, sp.tag}].push_back(slot);
        }
      } else {
        postedAny_[sp.tag].push_back(slot);
      }
    }
  }
  if (ready) copyParked(slot, *ready, completed);
  runCallbacks(completed);
  return slot;
}

void Mailbox::setRendezvous(RendezvousHooks hooks) {
  std::lock_guard<std::mutex> lock(mutex_);
  rendezvous_ = std::move(hooks);
}

RecvHandle Mailbox::takePostedLocked(int src, const Header& h) {
  auto it = posted_.find(Key{h.kind, src, h.kind == static_cast<uint8_t>(MsgKind::P2P) ? 0 : h.seq, h.tag});
  std::deque<RecvHandle>* specific = (it != posted_.end() && !it->second.empty()) ? &it->second : nullptr;
  std::deque<RecvHandle>* any = nullptr;
  if (h.kind == static_cast<uint8_t>(MsgKind::P2P)) {
    auto a = postedAny_.find(h.tag);
    if (a != postedAny_.end() && !a->second.empty()) any = &a->second;
  }
  std::deque<RecvHandle>* chosen = specific;
  if (any != nullptr && (chosen == nullptr || any->front()->order_ < chosen->front()->order_)) chosen = any;
  if (chosen == nullptr) return nullptr;
  RecvHandle slot = chosen->front();
  chosen->pop_front();
  if (chosen == specific && specific->empty()) posted_.erase(it);
  slot->source_ = src;
  return slot;
}

Mailbox::Delivery Mailbox::beginDelivery(int src, const Header& h) {
  Delivery d;
  d.src = src;
  d.header = h;
  std::vector<RecvHandle> completed;
  const bool offer = h.kind == static_cast<uint8_t>(MsgKind::P2P) && h.op == kP2POffer;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (abortReason_) return d;  // discard
    if (offer) {
      // The Offer is always read (an answer is owed even to a refused one);
      // the size check waits for it (endOffer).
      d.offer = std::make_shared<Offer>();
      d.accepted = true;
      d.dst = d.offer.get();
      if (!rendezvous_.pull) d.refusal = strCat("agentcomm: rank ", src, " offered a message by rendezvous, which ",
                                                "this rank cannot take (no cross-memory attach here)");
    }
    RecvHandle slot = takePostedLocked(src, h);
    if (slot) {
      std::string bad = offer && !d.refusal.empty() ? d.refusal : checkMatch(slot->spec_, src, h, !offer);
      if (!bad.empty()) {
        failLocked(slot, RecvSlot::FailKind::Mismatch, bad, completed);
        // Eager: the payload is drained and dropped by the caller (d.accepted == false).
        if (offer) d.refusal = bad;
      } else if (offer) {
        slot->state_ = RecvSlot::State::Delivering;
        d.slot = slot;
      } else {
        slot->state_ = RecvSlot::State::Delivering;
        d.slot = slot;
        d.accepted = true;
        d.dst = slot->spec_.buffer;
      }
    } else if (offer) {
      // Parked once its size is known (endOffer); this reader delivers the
      // source's messages one at a time, so the per-source order holds.
      d.pendingOffer = std::make_shared<Unexpected>();
      d.pendingOffer->src = src;
      d.pendingOffer->order = nextOrder_++;
    } else {
      if (h.kind == static_cast<uint8_t>(MsgKind::Collective)) {
        // No receive for this tag, but one for the same collective from the
        // same peer: if they disagree on the collective, fail it now.
        auto near = posted_.lower_bound(Key{h.kind, src, h.seq, 0});
        if (near != posted_.end() && std::get<0>(near->first) == h.kind && std::get<1>(near->first) == src &&
            std::get<2>(near->first) == h.seq && !near->second.empty()) {
          std::string bad = checkMatch(near->second.front()->spec_, src, h, false);
          if (!bad.empty()) {
            RecvHandle victim = near->second.front();
            near->second.pop_front();
            if (near->second.empty()) posted_.erase(near);
            failLocked(victim, RecvSlot::FailKind::Mismatch, bad, completed);
          }
        }
      }
      auto msg = std::make_shared<Unexpected>();
      msg->header = h;
      msg->src = src;
      msg->order = nextOrder_++;
      msg->data.resize(h.nbytes);
      unexpected_[Key{h.kind, src, h.kind == static_cast<uint8_t>(MsgKind::P2P) ? 0 : h.seq, h.tag}].push_back(msg);
      d.parkedRef = msg;
      d.parked = msg.get();
      d.accepted = true;
      d.dst = msg->data.data();
    }
  }
  runCallbacks(completed);
  return d;
}

void Mailbox::endOffer(Delivery& d, bool ok) {
  std::vector<RecvHandle> completed;
  const Offer o = *d.offer;
  RecvHandle slot;                      // the receive the payload is pulled into, or
  std::shared_ptr<Unexpected> parked;   // the parked copy a later receive takes
  std::string refusal = d.refusal;
  bool answer = ok;                     // owed unless the connection broke or the communicator is gone
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!ok || abortReason_) {
      if (d.slot)
        failLocked(d.slot, RecvSlot::FailKind::Comm,
                   abortReason_.value_or("agentcomm: connection failed while receiving"), completed);
      answer = false;
    } else if (refusal.empty()) {
      // From here on the offer is the eager message it stands for.
      Header h = d.header;
      h.nbytes = o.bytes;
      h.op = 0;
      slot = d.slot;
      if (!slot) {
        slot = takePostedLocked(d.src, h);  // posted while the offer was being read?
        if (slot) slot->state_ = RecvSlot::State::Delivering;
      }
      if (slot) {
        refusal = checkMatch(slot->spec_, d.src, h);
        if (!refusal.empty()) {
          failLocked(slot, RecvSlot::FailKind::Mismatch, refusal, completed);
          slot = nullptr;
        }
      } else {
        // Visible to post() from here, but incomplete: a receive only claims
        // it, and nobody reads its data before it is settled below.
        parked = d.pendingOffer;
        parked->header = h;
        unexpected_[Key{h.kind, d.src, 0, h.tag}].push_back(parked);
      }
    }
  }
  bool taken = false;
  std::string why;
  if (answer && refusal.empty()) {
    try {
      if (parked) parked->data.resize(o.bytes);  // outside the lock: it may be large
      if (o.bytes > 0) rendezvous_.pull(d.src, o.addr, slot ? slot->spec_.buffer : parked->data.data(), o.bytes);
      taken = true;
    } catch (const std::exception& e) {
      why = e.what();
    }
  }
  if (answer && rendezvous_.acknowledge) rendezvous_.acknowledge(d.src, o.id, taken);
  RecvHandle copyInto;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (slot)
      finishLocked(slot, taken, why, completed);
    else if (parked)
      copyInto = settleParkedLocked(*parked, taken, why, completed);
  }
  if (copyInto) copyParked(copyInto, *parked, completed);
  runCallbacks(completed);
}

void Mailbox::endDelivery(Delivery& d, bool ok) {
  if (d.offer) return endOffer(d, ok);
  std::vector<RecvHandle> completed;
  RecvHandle copyInto;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::string why = ok ? std::string() : abortReason_.value_or("agentcomm: connection failed while receiving");
    if (d.slot)
      finishLocked(d.slot, ok, why, completed);
    else if (d.parked != nullptr)
      copyInto = settleParkedLocked(*d.parked, ok, why, completed);
  }
  if (copyInto) copyParked(copyInto, *d.parked, completed);
  runCallbacks(completed);
}

bool Mailbox::wait(const RecvHandle& slot, Deadline deadline) {
  std::unique_lock<std::mutex> lock(mutex_);
  auto settled = [&] { return slot->state_ == RecvSlot::State::Done || slot->state_ == RecvSlot::State::Failed; };
  while (!settled()) {
    if (slot->state_ == RecvSlot::State::Posted) {
      if (slot->cv_.wait_until(lock, deadline) == std::cv_status::timeout && slot->state_ == RecvSlot::State::Posted) {
        return false;
      }
    } else {
      // Delivering: the payload is landing in our buffer; let it finish whatever the deadline.
      slot->cv_.wait(lock);
    }
  }
  if (slot->state_ == RecvSlot::State::Failed) {
    if (slot->failKind_ == RecvSlot::FailKind::Mismatch) throw MismatchError(slot->error_);
    throw CommError(slot->error_);
  }
  return true;
}

void Mailbox::waitQuiescent(const RecvHandle& slot) {
  std::unique_lock<std::mutex> lock(mutex_);
  slot->cv_.wait(lock, [&] { return slot->state_ != RecvSlot::State::Delivering; });
}

void Mailbox::setAbortListener(std::function<void(const std::string&)> listener) {
  std::lock_guard<std::mutex> lock(mutex_);
  abortListener_ = std::move(listener);
}

void Mailbox::abort(const std::string& reason) {
  std::vector<RecvHandle> completed;
  std::function<void(const std::string&)> listener;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (abortReason_) return;
    abortReason_ = reason;
    listener = abortListener_;
    for (auto& [key, q] : posted_)
      for (auto& s : q) failLocked(s, RecvSlot::FailKind::Comm, reason, completed);
    for (auto& [tag, q] : postedAny_)
      for (auto& s : q) failLocked(s, RecvSlot::FailKind::Comm, reason, completed);
    posted_.clear();
    postedAny_.clear();
    unexpected_.clear();
  }
  runCallbacks(completed);
  if (listener) listener(reason);
}

void Mailbox::failPeer(int src, const std::string& reason) {
  std::vector<RecvHandle> completed;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (abortReason_ || deadPeers_.count(src)) return;
    deadPeers_[src] = reason;
    for (auto it = posted_.begin(); it != posted_.end();) {
      if (std::get<1>(it->first) == src) {
        for (auto& s : it->second) failLocked(s, RecvSlot::FailKind::Comm, reason, completed);
        it = posted_.erase(it);
      } else {
        ++it;
      }
    }
  }
  runCallbacks(completed);
}

std::optional<std::string> Mailbox::peerFailure(int src) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = deadPeers_.find(src);
  if (it == deadPeers_.end()) return std::nullopt;
  return it->second;
}

std::optional<std::string> Mailbox::abortReason() {
  std::lock_guard<std::mutex> lock(mutex_);
  return abortReason_;
}

}  // namespace agentcomm::transport
