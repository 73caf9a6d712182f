// Rendezvous offers through the real Mailbox, delivered the way a transport's
// reader delivers them (beginDelivery, the Offer bytes, endDelivery). The
// "sender's memory" is this process's: the pull hook copies from the offered
// address, as process_vm_readv would from a peer's.
#include <gtest/gtest.h>

#include <cstring>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "core/error.h"
#include "transport/mailbox.h"

using namespace agentcomm;
using namespace agentcomm::transport;

namespace {

struct Acks {
  std::mutex mu;
  std::vector<std::pair<uint64_t, bool>> got;  // (id, taken)
};

class MailboxRendezvous : public ::testing::Test {
 protected:
  void SetUp() override {
    RendezvousHooks hooks;
    hooks.pull = [this](int, uint64_t addr, void* dst, size_t n) {
      if (failPull_) throw CommError("pull failed on purpose");
      std::memcpy(dst, reinterpret_cast<const void*>(addr), n);
    };
    hooks.acknowledge = [this](int, uint64_t id, bool taken) {
      std::lock_guard<std::mutex> lock(acks_.mu);
      acks_.got.emplace_back(id, taken);
    };
    box_.setRendezvous(hooks);
  }

  static Header p2p(uint64_t tag, uint64_t bytes, bool offer, uint8_t dtype = 0) {
    Header h;
    h.kind = static_cast<uint8_t>(MsgKind::P2P);
    h.collective = 0;
    h.dtype = dtype;
    h.tag = tag;
    h.count = bytes;
    h.op = offer ? kP2POffer : 0;
    h.nbytes = offer ? sizeof(Offer) : bytes;
    return h;
  }

  // What a reader does with one frame; `between` runs after the header was seen.
  void deliverOffer(int src, uint64_t tag, const std::vector<uint8_t>& payload, uint64_t id,
                    const std::function<void()>& between = {}, uint8_t dtype = 0) {
    auto d = box_.beginDelivery(src, p2p(tag, payload.size(), true, dtype));
    ASSERT_TRUE(d.accepted);
    if (between) between();
    Offer o{reinterpret_cast<uint64_t>(payload.data()), payload.size(), id};
    std::memcpy(d.dst, &o, sizeof o);
    box_.endDelivery(d, true);
  }
  void deliverEager(int src, uint64_t tag, const std::vector<uint8_t>& payload) {
    auto d = box_.beginDelivery(src, p2p(tag, payload.size(), false));
    ASSERT_TRUE(d.accepted);
    if (!payload.empty()) std::memcpy(d.dst, payload.data(), payload.size());
    box_.endDelivery(d, true);
  }
  RecvHandle post(int src, uint64_t tag, std::vector<uint8_t>& buf, uint8_t dtype = 0) {
    RecvSpec s;
    s.kind = MsgKind::P2P;
    s.src = src;
    s.tag = tag;
    s.buffer = buf.data();
    s.nbytes = buf.size();
    s.dtype = dtype;
    s.count = buf.size();
    return box_.post(std::move(s));
  }
  static std::vector<uint8_t> bytes(size_t n, uint8_t seed) {
    std::vector<uint8_t> v(n);
    std::iota(v.begin(), v.end(), seed);
    return v;
  }
  std::vector<std::pair<uint64_t, bool>> acks() {
    std::lock_guard<std::mutex> lock(acks_.mu);
    return acks_.got;
  }
  bool done(const RecvHandle& h) { return box_.wait(h, Clock::now()); }

  Mailbox box_{0};
  Acks acks_;
  bool failPull_ = false;
};

}  // namespace

TEST_F(MailboxRendezvous, PostedFirstIsPulledIntoTheBuffer) {
  auto payload = bytes(5000, 3);
  std::vector<uint8_t> buf(5000, 0);
  auto h = post(1, 7, buf);
  deliverOffer(1, 7, payload, 41);
  EXPECT_TRUE(done(h));
  EXPECT_EQ(buf, payload);
  EXPECT_EQ(h->source(), 1);
  EXPECT_EQ(acks(), (std::vector<std::pair<uint64_t, bool>>{{41, true}}));
}

TEST_F(MailboxRendezvous, ArrivingFirstIsTakenAtOnceAndParked) {
  auto payload = bytes(3000, 9);
  deliverOffer(2, 5, payload, 1);
  // Acknowledged before any receive exists: the sender never waits on the receiver's program.
  EXPECT_EQ(acks(), (std::vector<std::pair<uint64_t, bool>>{{1, true}}));
  payload.assign(payload.size(), 0xEE);  // the sender reuses its buffer after the ack
  std::vector<uint8_t> buf(3000, 0);
  auto h = post(2, 5, buf);
  EXPECT_TRUE(done(h));
  EXPECT_EQ(buf, bytes(3000, 9));
}

TEST_F(MailboxRendezvous, PostedWhileTheOfferIsReadGoesStraightToTheBuffer) {
  auto payload = bytes(777, 1);
  std::vector<uint8_t> buf(777, 0);
  RecvHandle h;
  deliverOffer(3, 2, payload, 9, [&] { h = post(3, 2, buf); });
  EXPECT_TRUE(done(h));
  EXPECT_EQ(buf, payload);
}

TEST_F(MailboxRendezvous, AnySourceAndOrderWithEagerMessages) {
  // Same source and tag: eager, offer, eager must be received in that order.
  deliverEager(4, 1, bytes(10, 100));
  auto big = bytes(2000, 50);
  deliverOffer(4, 1, big, 2);
  deliverEager(4, 1, bytes(10, 200));
  std::vector<uint8_t> a(10), b(2000), c(10);
  auto ha = post(4, 1, a);
  auto hb = post(-1, 1, b);  // any source
  auto hc = post(4, 1, c);
  EXPECT_TRUE(done(ha) && done(hb) && done(hc));
  EXPECT_EQ(a, bytes(10, 100));
  EXPECT_EQ(b, big);
  EXPECT_EQ(hb->source(), 4);
  EXPECT_EQ(c, bytes(10, 200));
}

TEST_F(MailboxRendezvous, SizeMismatchIsRefusedAndFailsTheReceive) {
  auto payload = bytes(4000, 0);
  std::vector<uint8_t> buf(3996, 0);
  auto h = post(1, 3, buf);
  deliverOffer(1, 3, payload, 77);
  try {
    box_.wait(h, Clock::now());
    FAIL() << "no error";
  } catch (const MismatchError& e) {
    EXPECT_NE(std::string(e.what()).find("send/recv mismatch"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("4000 bytes"), std::string::npos) << e.what();
  }
  EXPECT_EQ(acks(), (std::vector<std::pair<uint64_t, bool>>{{77, false}}));
  EXPECT_EQ(buf, std::vector<uint8_t>(3996, 0));  // nothing landed
}

TEST_F(MailboxRendezvous, DtypeMismatchIsRefusedAtOnce) {
  std::vector<uint8_t> buf(64, 0);
  auto h = post(1, 3, buf, /*dtype=*/1);
  deliverOffer(1, 3, bytes(64, 0), 5, {}, /*dtype=*/2);
  EXPECT_THROW(box_.wait(h, Clock::now()), MismatchError);
  EXPECT_EQ(acks(), (std::vector<std::pair<uint64_t, bool>>{{5, false}}));
}

TEST_F(MailboxRendezvous, ParkedOfferOfTheWrongSizeFailsTheLaterReceive) {
  deliverOffer(1, 8, bytes(100, 0), 6);
  EXPECT_EQ(acks(), (std::vector<std::pair<uint64_t, bool>>{{6, true}}));  // taken (as an eager message would be)
  std::vector<uint8_t> buf(99, 0);
  auto h = post(1, 8, buf);
  EXPECT_THROW(box_.wait(h, Clock::now()), MismatchError);
}

TEST_F(MailboxRendezvous, FailedPullIsRefusedAndFailsTheReceive) {
  failPull_ = true;
  std::vector<uint8_t> buf(100, 0);
  auto h = post(1, 4, buf);
  deliverOffer(1, 4, bytes(100, 0), 8);
  try {
    box_.wait(h, Clock::now());
    FAIL() << "no error";
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("pull failed"), std::string::npos) << e.what();
  }
  EXPECT_EQ(acks(), (std::vector<std::pair<uint64_t, bool>>{{8, false}}));
}

TEST(MailboxRendezvousNoHooks, AnOfferIsRefusedWithAReason) {
  Mailbox box(0);
  std::vector<uint8_t> buf(16, 0), payload(16, 1);
  RecvSpec s;
  s.kind = MsgKind::P2P;
  s.src = 1;
  s.tag = 1;
  s.buffer = buf.data();
  s.nbytes = 16;
  auto h = box.post(std::move(s));
  Header hd;
  hd.kind = static_cast<uint8_t>(MsgKind::P2P);
  hd.tag = 1;
  hd.op = kP2POffer;
  hd.nbytes = sizeof(Offer);
  auto d = box.beginDelivery(1, hd);
  Offer o{reinterpret_cast<uint64_t>(payload.data()), 16, 1};
  std::memcpy(d.dst, &o, sizeof o);
  box.endDelivery(d, true);
  try {
    box.wait(h, Clock::now());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rendezvous"), std::string::npos) << e.what();
  }
}
