// Robustness tests: inputs found by adversarial testing of pagepoold that once lost pages, broke
// streams or crashed a client. Each test is a regression test of one defect.
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "client/traffic.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_harness.h"
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/client_unary_call.h>

namespace pagepool {
namespace {

namespace v1 = ::pagepool::v1;
using ::testing::HasSubstr;
using testing::InProcessDaemon;

class RobustnessTest : public ::testing::Test {
 protected:
  void Start(uint32_t max_message_bytes) {
    server::DaemonOptions o = InProcessDaemon::DefaultOptions();
    o.max_message_bytes = max_message_bytes;
    auto d = InProcessDaemon::Start(o);
    ASSERT_TRUE(d.ok()) << d.status();
    d_ = std::move(*d);
    v1::CreateDeviceRequest dr;
    auto dev = c().CreateDevice(dr);
    ASSERT_TRUE(dev.ok()) << dev.status();
    dev_ = dev->device().id();
    v1::CreatePoolRequest pr;
    pr.set_device_id(dev_);
    auto pool = c().CreatePool(pr);
    ASSERT_TRUE(pool.ok()) << pool.status();
    pool_ = pool->pool().id();
  }
  client::Client& c() { return d_->client(); }

  // Pages users still held when the pool is destroyed (the pages nobody can give back any more).
  uint64_t HeldAtDestroy() {
    auto r = c().DestroyPool(pool_);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->inflight_at_destroy() : ~uint64_t{0};
  }

  std::unique_ptr<InProcessDaemon> d_;
  uint64_t dev_ = 0;
  uint64_t pool_ = 0;
};

// Defect: an Allocate whose answer was above --max-message-bytes allocated the pages, then gRPC
// refused to send the answer ("Sent message larger than max"): the pages stayed in flight for ever
// with nobody holding their handles, and the call was counted as a success.
TEST_F(RobustnessTest, AllocateAnswerAboveMessageLimitLeavesNoPageInFlight) {
  Start(4096);
  auto r = c().Allocate(pool_, 1000);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("--max-message-bytes"));
  // A call that fits still works.
  auto ok = c().Allocate(pool_, 10);
  ASSERT_TRUE(ok.ok()) << ok.status();
  v1::ReturnRequest ret;
  ret.set_pool_id(pool_);
  for (const auto& p : ok->pages()) *ret.add_pages() = p.handle();
  ASSERT_TRUE(c().Return(ret).ok());
  EXPECT_EQ(HeldAtDestroy(), 0u);
  EXPECT_EQ(c().GetDomain(dev_)->domain().violations().total(), 0u);
}

// Same defect on the Traffic stream: the whole stream died with RESOURCE_EXHAUSTED and the pages
// of the batch were lost. Now the batch reports the refusal and the stream goes on.
TEST_F(RobustnessTest, TrafficAnswerAboveMessageLimitIsRefusedInTheBatch) {
  Start(4096);
  grpc::ClientContext ctx;
  auto rw = c().stub()->Traffic(&ctx);
  v1::TrafficRequest req;
  v1::TrafficResponse resp;
  req.set_pool_id(pool_);
  req.set_seq(1);
  req.set_allocate(1000);
  ASSERT_TRUE(rw->Write(req));
  ASSERT_TRUE(rw->Read(&resp));
  EXPECT_EQ(resp.seq(), 1u);
  EXPECT_EQ(resp.allocated_size(), 0);
  EXPECT_EQ(resp.errors(), 1u);
  EXPECT_EQ(resp.error_code(), static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
  EXPECT_THAT(resp.error_message(), HasSubstr("--max-message-bytes"));
  // The stream goes on: a batch that fits, then everything back.
  req.set_seq(2);
  req.set_allocate(8);
  ASSERT_TRUE(rw->Write(req));
  ASSERT_TRUE(rw->Read(&resp));
  ASSERT_EQ(resp.allocated_size(), 8) << resp.error_message();
  req.Clear();
  req.set_pool_id(pool_);
  req.set_seq(3);
  for (const auto& p : resp.allocated()) *req.add_return_pages() = p.handle();
  ASSERT_TRUE(rw->Write(req));
  ASSERT_TRUE(rw->Read(&resp));
  EXPECT_EQ(resp.returned(), 8u);
  rw->WritesDone();
  EXPECT_TRUE(rw->Finish().ok());
  EXPECT_EQ(HeldAtDestroy(), 0u);
}

// Defect: ListInflight and DumpPageTable sent 256 entries per message whatever the message limit:
// with a small --max-message-bytes every such stream failed with RESOURCE_EXHAUSTED.
TEST_F(RobustnessTest, SnapshotStreamsFitTheMessageLimit) {
  Start(2048);
  std::vector<v1::PageHandle> held;
  for (int i = 0; i < 10; ++i) {
    auto a = c().Allocate(pool_, 30);
    ASSERT_TRUE(a.ok()) << a.status();
    for (const auto& p : a->pages()) held.push_back(p.handle());
  }
  auto inflight = c().ListInflight(pool_);
  ASSERT_TRUE(inflight.ok()) << inflight.status();
  EXPECT_GE(inflight->pages_size(), 300);
  v1::DumpPageTableRequest dump;
  dump.set_device_id(dev_);
  auto entries = c().DumpPageTable(dump);
  ASSERT_TRUE(entries.ok()) << entries.status();
  EXPECT_GE(entries->entries_size(), 300);
}

// Defect: DumpPageTable built the whole range as protobuf messages before sending the first one
// (about 70 bytes per present leaf, per call: 70 MB for a 1 Mi-page table, times every concurrent
// dump). It now walks one message at a time from a cursor; the stream must still hold every leaf
// exactly once, in IOVA order, and honour start and limit.
TEST_F(RobustnessTest, DumpPageTableWalksInMessagesWithoutLosingOrRepeatingLeaves) {
  Start(16 << 20);
  for (int i = 0; i < 7; ++i) {
    auto a = c().Allocate(pool_, 100);
    ASSERT_TRUE(a.ok()) << a.status();
  }
  const uint64_t mapped = c().GetDomain(dev_)->domain().mapped_pages();
  ASSERT_GE(mapped, 700u);
  v1::DumpPageTableRequest req;
  req.set_device_id(dev_);
  grpc::ClientContext ctx;
  auto reader = c().stub()->DumpPageTable(&ctx, req);
  v1::DumpPageTableResponse part;
  std::vector<uint64_t> iovas;
  int messages = 0;
  while (reader->Read(&part)) {
    ++messages;
    EXPECT_LE(part.entries_size(), 256);
    for (const auto& e : part.entries()) iovas.push_back(e.iova());
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(iovas.size(), mapped);
  EXPECT_GE(messages, 3);
  for (size_t i = 1; i < iovas.size(); ++i) ASSERT_GT(iovas[i], iovas[i - 1]) << i;

  req.set_limit(300);
  auto limited = c().DumpPageTable(req);
  ASSERT_TRUE(limited.ok()) << limited.status();
  EXPECT_EQ(limited->entries_size(), 300);
  req.set_limit(0);
  req.set_start(iovas[400]);
  auto tail = c().DumpPageTable(req);
  ASSERT_TRUE(tail.ok()) << tail.status();
  ASSERT_EQ(static_cast<size_t>(tail->entries_size()), iovas.size() - 400);
  EXPECT_EQ(tail->entries(0).iova(), iovas[400]);
  req.set_start(iovas[400]);
  req.set_end(iovas[410]);
  auto range = c().DumpPageTable(req);
  ASSERT_TRUE(range.ok()) << range.status();
  EXPECT_EQ(range->entries_size(), 10);
  // Beyond the address space: nothing, and no error.
  req.set_start(uint64_t{1} << 50);
  req.set_end(uint64_t{1} << 60);
  auto beyond = c().DumpPageTable(req);
  ASSERT_TRUE(beyond.ok()) << beyond.status();
  EXPECT_EQ(beyond->entries_size(), 0);
}

// Defect: UnbindDevice published a POOL_DETACH (or POOL_DELETE) event for every pool of the device,
// including pools a DestroyPool had detached before: WatchEvents showed the pool detached twice.
TEST_F(RobustnessTest, UnbindAfterDestroyPublishesNoSecondDetach) {
  Start(16 << 20);
  grpc::ClientContext ctx;
  v1::WatchEventsRequest wr;
  wr.set_include_existing(true);  // the replay proves the subscription is in place
  auto reader = c().stub()->WatchEvents(&ctx, wr);
  v1::Event ev;
  for (int replayed = 0; replayed < 2; ++replayed) ASSERT_TRUE(reader->Read(&ev));  // device, pool
  auto held = c().Allocate(pool_, 3);  // keeps the pool detached, not deleted, after the destroy
  ASSERT_TRUE(held.ok()) << held.status();
  ASSERT_TRUE(c().DestroyPool(pool_).ok());
  auto unbound = c().UnbindDevice(dev_);
  ASSERT_TRUE(unbound.ok()) << unbound.status();
  EXPECT_EQ(unbound->pools_destroyed(), 0u);
  int detach = 0, remove = 0;
  while (reader->Read(&ev)) {  // DEVICE_CHANGE comes after the unbind's pool events
    if (ev.type() == v1::EVENT_TYPE_POOL_DETACH && ev.pool().id() == pool_) ++detach;
    if (ev.type() == v1::EVENT_TYPE_POOL_DELETE && ev.pool().id() == pool_) ++remove;
    if (ev.type() == v1::EVENT_TYPE_DEVICE_CHANGE) break;
  }
  ctx.TryCancel();
  reader->Finish();
  EXPECT_EQ(detach, 1);
  EXPECT_EQ(remove, 0);
}

// Defect: a request that did not parse (a name that is not UTF-8, or bytes that are not protobuf
// at all) was answered UNIMPLEMENTED with an empty message by the typed callback API.
TEST_F(RobustnessTest, MalformedUnaryRequestIsInvalidArgumentWithAMessage) {
  Start(16 << 20);
  auto channel = grpc::CreateChannel(d_->address(), grpc::InsecureChannelCredentials());
  auto call = [&](const std::string& method, const std::string& bytes) {
    grpc::ClientContext ctx;
    grpc::Slice slice(bytes);
    grpc::ByteBuffer req(&slice, 1), resp;
    return grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
        channel.get(),
        grpc::internal::RpcMethod(("/pagepool.v1.PagePoolService/" + method).c_str(),
                                  grpc::internal::RpcMethod::NORMAL_RPC),
        &ctx, req, &resp);
  };
  // CreateDeviceRequest.name (field 1) = the bytes ff fe fd: not UTF-8.
  grpc::Status s = call("CreateDevice", std::string("\x0a\x03\xff\xfe\xfd", 5));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("pagepool.v1.CreateDeviceRequest"));
  s = call("Return", std::string("\xff\xff\xff\xff", 4));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("Return"));
  // The server streams too (they answered UNIMPLEMENTED with no message).
  for (const char* method : {"ListInflight", "DumpPageTable", "WatchEvents"}) {
    grpc::ClientContext ctx;
    grpc::Slice slice(std::string("\xff\xff\xff", 3));
    grpc::ByteBuffer req(&slice, 1), resp;
    std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader(
        grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(
            channel.get(),
            grpc::internal::RpcMethod(
                (std::string("/pagepool.v1.PagePoolService/") + method).c_str(),
                grpc::internal::RpcMethod::SERVER_STREAMING),
            &ctx, req));
    EXPECT_FALSE(reader->Read(&resp));
    s = reader->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(method));
  }
  // A well-formed raw request still works.
  v1::GetPoolRequest get;
  get.set_pool_id(pool_);
  EXPECT_TRUE(call("GetPool", get.SerializeAsString()).ok());
  auto list = c().ListDevices();
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->devices_size(), 1);  // the malformed CreateDevice created nothing
}

// Defect: a Traffic message that did not parse ended the stream with OK, exactly as if the client
// had half-closed (the typed callback API reports both as a failed read): the batch was silently
// dropped and the client was told all was well. Now the stream ends with INVALID_ARGUMENT.
TEST_F(RobustnessTest, MalformedTrafficMessageEndsTheStreamWithInvalidArgument) {
  Start(16 << 20);
  auto channel = grpc::CreateChannel(d_->address(), grpc::InsecureChannelCredentials());
  grpc::ClientContext ctx;
  grpc::internal::RpcMethod method("/pagepool.v1.PagePoolService/Traffic",
                                   grpc::internal::RpcMethod::BIDI_STREAMING);
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> rw(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
          channel.get(), method, &ctx));
  auto send = [&](const std::string& bytes) {
    grpc::Slice slice(bytes);
    grpc::ByteBuffer bb(&slice, 1);
    return rw->Write(bb);
  };
  v1::TrafficRequest good;
  good.set_pool_id(pool_);
  good.set_seq(1);
  ASSERT_TRUE(send(good.SerializeAsString()));
  grpc::ByteBuffer in;
  ASSERT_TRUE(rw->Read(&in));
  v1::TrafficResponse resp;
  ASSERT_TRUE(grpc::SerializationTraits<v1::TrafficResponse>::Deserialize(&in, &resp).ok());
  EXPECT_EQ(resp.seq(), 1u);
  send(std::string("\xff\xff\xff\xff\xff", 5));
  EXPECT_FALSE(rw->Read(&in));
  grpc::Status s = rw->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("message #2"));
  // The daemon goes on serving Traffic.
  grpc::ClientContext ctx2;
  auto typed = c().stub()->Traffic(&ctx2);
  good.set_allocate(2);
  ASSERT_TRUE(typed->Write(good));
  ASSERT_TRUE(typed->Read(&resp));
  EXPECT_EQ(resp.allocated_size(), 2);
  good.Clear();
  good.set_pool_id(pool_);
  for (const auto& p : resp.allocated()) *good.add_return_pages() = p.handle();
  ASSERT_TRUE(typed->Write(good));
  ASSERT_TRUE(typed->Read(&resp));
  typed->WritesDone();
  EXPECT_TRUE(typed->Finish().ok());
  EXPECT_EQ(HeldAtDestroy(), 0u);
}

// Defect: `ppctl traffic --streams N` with N larger than the threads the process may start
// aborted ppctl (std::system_error out of std::thread). Now an absurd count is refused up front.
TEST_F(RobustnessTest, TrafficWithAbsurdStreamCountIsRefused) {
  Start(16 << 20);
  client::TrafficOptions o;
  o.pattern = "steady";
  o.duration_s = 0.2;
  o.streams = 1000000;
  auto r = client::RunTraffic(c(), o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("streams"));
  // A duration that is not finite is refused too (it ran for 0 s and reported success).
  o.streams = 1;
  o.duration_s = std::numeric_limits<double>::infinity();
  r = client::RunTraffic(c(), o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
}

}  // namespace
}  // namespace pagepool
