// File: tests/fuzz/service_fuzz.cc
//
// Fuzzes the service's requests with arbitrary bytes, in process. Each input gets a fresh
// pagepoold backend: a Runtime over 64 MiB of simulated memory with small limits, so ids and frames
// are the same on every run of an input. The input is a sequence of calls, each a method selector
// byte then:
//
//   * a raw call: length-prefixed bytes sent as the request of a unary method (CreateDevice ...
//     Return, GetDomain) or of a server stream (ListInflight, DumpPageTable), or 1-4 such messages
//     on one Traffic stream;
//   * a built call: Recycle or Return of pages a previous Allocate handed out, so that inputs
//     reach the give-back paths with valid handles (a count and flag bytes choose which and how);
//     or Recycle or Return of fragments a previous Allocate with frag_size handed out (a count and
//     a flag byte: recycle or return, napi_local, one fragment named twice).
//
// Two transports carry the same calls:
//   * by default the request bytes are parsed as the method's request message (INVALID_ARGUMENT
//     when they do not parse, as the service answers) and handed to the Runtime method the service
//     calls, the answer serialized back; or
//   * with PAGEPOOL_FUZZ_SERVICE_GRPC=1 the bytes go as raw grpc::ByteBuffers through a
//     grpc::GenericStub on the in-process channel of a grpc::Server running PagePoolServiceImpl (a
//     small message limit, so answers that do not fit are given back) to the real handlers
//     (ParseRequest, the stream reactors). Each call then waits for gRPC's callback threads, a few
//     milliseconds on a loaded machine (tests/fuzz/README.md has the rates measured both ways), so
//     it serves to replay the corpus through the real service (ctest
//     service_fuzz_grpc_replay) and for runs where time allows.
//
// Invariants: no crash or sanitizer report; every call ends with a status code the service may
// give (never UNKNOWN, INTERNAL, UNIMPLEMENTED, DATA_LOSS or DEADLINE_EXCEEDED); an OK answer
// parses as the method's response type; an OK Allocate gives exactly `count` pages (or fragments),
// no whole page a frame already handed out and not given back; Recycle and Return are
// all-or-nothing, a fragment named more often than it is held refused; at shutdown
// the runtime counts zero mapping-checker violations, except on devices that had a STRATEGY_NONE
// pool (that strategy leaves pages mapped by design, and returning them afterwards is counted).
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <future>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "google/protobuf/descriptor.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/message.h"
#include "pagepool/v1/pagepool.pb.h"
#include "server/rpc_stats.h"
#include "server/runtime.h"
#include "server/service.h"
#include "server/status_convert.h"
#include "tests/fuzz/fuzz_support.h"
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

namespace pagepool::server {
namespace {

namespace v1 = ::pagepool::v1;
using fuzz::FuzzInput;

constexpr size_t kMaxCalls = 64;
constexpr size_t kMaxRequestBytes = 4096;

// The methods a raw call may name, by selector.
constexpr const char* kMethods[] = {
    "CreateDevice", "GetDevice",     "ListDevices", "UnbindDevice", "CreatePool", "GetPool",
    "ListPools",    "DestroyPool",   "Allocate",    "Recycle",      "Return",     "GetDomain",
    "ListInflight", "DumpPageTable", "Traffic",     "RefFrag",
};
constexpr size_t kRawMethods = sizeof(kMethods) / sizeof(kMethods[0]);
enum Built : uint8_t { kBuiltRecycle = kRawMethods, kBuiltReturn, kBuiltFrags, kSelectors };

std::string MethodPath(std::string_view name) {
  return std::string("/pagepool.v1.PagePoolService/").append(name);
}

grpc::ByteBuffer ToBuffer(std::string_view bytes) {
  grpc::Slice slice(bytes.data(), bytes.size());
  return grpc::ByteBuffer(&slice, 1);
}

std::string ToString(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const grpc::Slice& s : slices)
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

const google::protobuf::MethodDescriptor* FindMethod(std::string_view name) {
  const google::protobuf::ServiceDescriptor* service =
      v1::CreateDeviceRequest::descriptor()->file()->FindServiceByName("PagePoolService");
  FUZZ_CHECK(service != nullptr);
  const google::protobuf::MethodDescriptor* m = service->FindMethodByName(std::string(name));
  FUZZ_CHECK(m != nullptr) << name;
  return m;
}

// Whether an answer parses as `type`.
bool Parses(const google::protobuf::Descriptor* type, const std::string& bytes) {
  std::unique_ptr<google::protobuf::Message> m(
      google::protobuf::MessageFactory::generated_factory()->GetPrototype(type)->New());
  return m->ParseFromString(bytes);
}

void CheckCode(const char* method, const grpc::Status& s) {
  const grpc::StatusCode c = s.error_code();
  FUZZ_CHECK(c >= grpc::OK && c <= grpc::UNAUTHENTICATED) << method << ": code " << c;
  FUZZ_CHECK(c != grpc::UNKNOWN && c != grpc::INTERNAL && c != grpc::UNIMPLEMENTED &&
             c != grpc::DATA_LOSS && c != grpc::DEADLINE_EXCEEDED)
      << method << ": " << c << " " << s.error_message();
}

// A client stream call (server stream or bidi) over the generic stub: writes `requests`,
// half-closes, reads every answer.
class StreamCall final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  StreamCall(grpc::GenericStub* stub, const std::string& method,
             std::vector<grpc::ByteBuffer> requests)
      : requests_(std::move(requests)) {
    ctx_.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    stub->PrepareBidiStreamingCall(&ctx_, method, grpc::StubOptions(), this);
  }
  // Runs the call; returns its status, with the answers in answers().
  grpc::Status Run() {
    StartRead(&in_);
    NextWrite();
    StartCall();
    return done_.get_future().get();
  }
  const std::vector<std::string>& answers() const { return answers_; }

  void OnWriteDone(bool ok) override {
    if (ok) NextWrite();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    answers_.push_back(ToString(in_));
    StartRead(&in_);
  }
  void OnDone(const grpc::Status& s) override { done_.set_value(s); }

 private:
  void NextWrite() {
    if (next_ == requests_.size()) {
      StartWritesDone();
      return;
    }
    StartWrite(&requests_[next_++]);
  }

  grpc::ClientContext ctx_;
  std::vector<grpc::ByteBuffer> requests_;
  size_t next_ = 0;
  grpc::ByteBuffer in_;
  std::vector<std::string> answers_;
  std::promise<grpc::Status> done_;
};

// How calls reach the backend.
class Transport {
 public:
  virtual ~Transport() = default;
  // A unary call; the answer's bytes in *answer when OK.
  virtual grpc::Status Unary(const char* method, std::string_view req, std::string* answer) = 0;
  // A stream call (server stream or Traffic): writes `reqs`, half-closes, reads every answer.
  virtual grpc::Status Stream(const char* method, const std::vector<std::string>& reqs,
                              std::vector<std::string>* answers) = 0;
};

// Through gRPC: PagePoolServiceImpl on a grpc::Server, a GenericStub on its in-process channel.
class GrpcTransport final : public Transport {
 public:
  explicit GrpcTransport(Runtime* runtime) {
    ServiceOptions so;
    so.max_message_bytes = 16 << 10;
    so.max_streams = 4;
    so.max_held_per_stream = 4096;
    service_ = std::make_unique<PagePoolServiceImpl>(runtime, &stats_, so);
    grpc::ServerBuilder builder;
    builder.RegisterService(service_.get());
    builder.SetMaxReceiveMessageSize(1 << 20);
    server_ = builder.BuildAndStart();
    FUZZ_CHECK(server_ != nullptr);
    stub_ =
        std::make_unique<grpc::GenericStub>(server_->InProcessChannel(grpc::ChannelArguments()));
  }
  ~GrpcTransport() override {
    server_->Shutdown();
    server_->Wait();
  }

  grpc::Status Unary(const char* method, std::string_view req, std::string* answer) override {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    const grpc::ByteBuffer in = ToBuffer(req);
    grpc::ByteBuffer out;
    std::promise<grpc::Status> done;
    stub_->UnaryCall(&ctx, MethodPath(method), grpc::StubOptions(), &in, &out,
                     [&done](grpc::Status s) { done.set_value(std::move(s)); });
    grpc::Status s = done.get_future().get();
    if (s.ok()) *answer = ToString(out);
    return s;
  }

  grpc::Status Stream(const char* method, const std::vector<std::string>& reqs,
                      std::vector<std::string>* answers) override {
    std::vector<grpc::ByteBuffer> msgs;
    for (const std::string& r : reqs) msgs.push_back(ToBuffer(r));
    StreamCall call(stub_.get(), MethodPath(method), std::move(msgs));
    grpc::Status s = call.Run();
    *answers = call.answers();
    return s;
  }

 private:
  RpcStats stats_;
  std::unique_ptr<PagePoolServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::GenericStub> stub_;
};

// Straight to the Runtime: what each handler of server/service.cc does after parsing, without
// the wire (no message limit, no stream limits).
class RuntimeTransport final : public Transport {
 public:
  explicit RuntimeTransport(Runtime* runtime) : rt_(runtime) {}

  grpc::Status Unary(const char* method, std::string_view req, std::string* answer) override {
    const std::string_view m(method);
    if (m == "CreateDevice") {
      return Call<v1::CreateDeviceRequest, v1::CreateDeviceResponse>(
          req, answer,
          [&](const auto& r, auto* a) { return rt_->CreateDevice(r, a->mutable_device()); });
    }
    if (m == "GetDevice") {
      return Call<v1::GetDeviceRequest, v1::GetDeviceResponse>(
          req, answer, [&](const auto& r, auto* a) {
            return rt_->GetDevice(r.device_id(), a->mutable_device());
          });
    }
    if (m == "ListDevices") {
      return Call<v1::ListDevicesRequest, v1::ListDevicesResponse>(req, answer,
                                                                   [&](const auto&, auto* a) {
                                                                     rt_->ListDevices(a);
                                                                     return absl::OkStatus();
                                                                   });
    }
    if (m == "UnbindDevice") {
      return Call<v1::UnbindDeviceRequest, v1::UnbindDeviceResponse>(
          req, answer, [&](const auto& r, auto* a) { return rt_->UnbindDevice(r.device_id(), a); });
    }
    if (m == "CreatePool") {
      return Call<v1::CreatePoolRequest, v1::CreatePoolResponse>(
          req, answer,
          [&](const auto& r, auto* a) { return rt_->CreatePool(r, a->mutable_pool()); });
    }
    if (m == "GetPool") {
      return Call<v1::GetPoolRequest, v1::GetPoolResponse>(
          req, answer,
          [&](const auto& r, auto* a) { return rt_->GetPool(r.pool_id(), a->mutable_pool()); });
    }
    if (m == "ListPools") {
      return Call<v1::ListPoolsRequest, v1::ListPoolsResponse>(
          req, answer, [&](const auto& r, auto* a) { return rt_->ListPools(r.device_id(), a); });
    }
    if (m == "DestroyPool") {
      return Call<v1::DestroyPoolRequest, v1::DestroyPoolResponse>(
          req, answer, [&](const auto& r, auto* a) { return rt_->DestroyPool(r.pool_id(), a); });
    }
    if (m == "Allocate") {
      return Call<v1::AllocateRequest, v1::AllocateResponse>(
          req, answer, [&](const auto& r, auto* a) {
            return rt_->Allocate(r.pool_id(), r.count(), r.frag_size(), a->mutable_pages());
          });
    }
    if (m == "Recycle") {
      return Call<v1::RecycleRequest, v1::RecycleResponse>(
          req, answer, [&](const auto& r, auto* a) {
            return rt_->Recycle(r.pool_id(), r.pages(), r.frags(), r.napi_local(), a);
          });
    }
    if (m == "Return") {
      return Call<v1::ReturnRequest, v1::ReturnResponse>(req, answer, [&](const auto& r, auto* a) {
        return rt_->Return(r.pool_id(), r.pages(), r.frags(), a);
      });
    }
    if (m == "RefFrag") {
      return Call<v1::RefFragRequest, v1::RefFragResponse>(
          req, answer,
          [&](const auto& r, auto* a) { return rt_->RefFrag(r.pool_id(), r.frags(), a); });
    }
    if (m == "GetDomain") {
      return Call<v1::GetDomainRequest, v1::GetDomainResponse>(
          req, answer, [&](const auto& r, auto* a) {
            return rt_->GetDomain(r.device_id(), a->mutable_domain());
          });
    }
    FUZZ_CHECK(false) << "no unary method " << method;
    return grpc::Status::OK;
  }

  grpc::Status Stream(const char* method, const std::vector<std::string>& reqs,
                      std::vector<std::string>* answers) override {
    const std::string_view m(method);
    if (m == "Traffic") {
      Runtime::TrafficCache cache(4096);
      for (const std::string& bytes : reqs) {
        v1::TrafficRequest r;
        if (!r.ParseFromString(bytes)) return Unparsable(method);
        v1::TrafficResponse a;
        rt_->Traffic(r, &a, &cache);
        answers->push_back(a.SerializeAsString());
      }
      return grpc::Status::OK;
    }
    FUZZ_CHECK(reqs.size() == 1) << method;
    if (m == "ListInflight") {
      v1::ListInflightRequest r;
      if (!r.ParseFromString(reqs[0])) return Unparsable(method);
      // As the handler walks: a chunk at a time from the cursor, up to the limit (0: none).
      Runtime::InflightCursor cursor(r.start_index_id());
      v1::ListInflightResponse a;
      uint64_t listed = 0;
      uint32_t last_id = 0;
      while (!cursor.done() && (r.limit() == 0 || listed < r.limit())) {
        std::vector<InflightRecord> pages;
        const uint64_t left = r.limit() == 0 ? 0 : r.limit() - listed;
        absl::Status s = rt_->ListInflight(r.pool_id(), &cursor, left, &pages);
        if (!s.ok()) return ToGrpcStatus(s);
        FUZZ_CHECK(pages.size() <= Runtime::kInflightChunk) << pages.size();
        for (const InflightRecord& p : pages) {
          FUZZ_CHECK(p.index_id > last_id && p.index_id >= r.start_index_id())
              << "ListInflight out of order: " << p.index_id << " after " << last_id;
          last_id = p.index_id;
          v1::InflightPage* out = a.add_pages();
          out->set_index_id(p.index_id);
          out->mutable_handle()->set_frame(p.frame);
          out->mutable_handle()->set_generation(p.generation);
          out->set_dma_addr(p.dma_addr);
        }
        listed += pages.size();
      }
      FUZZ_CHECK(r.limit() == 0 || listed <= r.limit()) << listed;
      answers->push_back(a.SerializeAsString());
      return grpc::Status::OK;
    }
    if (m == "DumpPageTable") {
      v1::DumpPageTableRequest r;
      if (!r.ParseFromString(reqs[0])) return Unparsable(method);
      std::vector<v1::PageTableEntry> entries;
      absl::Status s = rt_->DumpPageTable(r.device_id(), r.start(), r.end(), r.limit(), &entries);
      if (!s.ok()) return ToGrpcStatus(s);
      v1::DumpPageTableResponse a;
      for (v1::PageTableEntry& e : entries) *a.add_entries() = std::move(e);
      answers->push_back(a.SerializeAsString());
      return grpc::Status::OK;
    }
    FUZZ_CHECK(false) << "no stream method " << method;
    return grpc::Status::OK;
  }

 private:
  static grpc::Status Unparsable(const char* method) {
    return grpc::Status(grpc::INVALID_ARGUMENT, std::string(method) + ": does not parse");
  }
  template <typename Req, typename Resp, typename Fn>
  grpc::Status Call(std::string_view bytes, std::string* answer, Fn fn) {
    Req r;
    if (!r.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
      return Unparsable(Req::descriptor()->name().c_str());
    }
    Resp a;
    absl::Status s = fn(r, &a);
    if (s.ok()) *answer = a.SerializeAsString();
    return ToGrpcStatus(s);
  }

  Runtime* const rt_;
};

// One pagepoold in process, and what the input has been handed so far.
class ServiceFuzzer {
 public:
  explicit ServiceFuzzer(bool grpc) {
    RuntimeOptions ro;
    ro.memory_bytes = uint64_t{64} << 20;
    ro.max_devices = 4;
    ro.max_pools = 8;
    ro.max_pages_per_call = 1024;
    absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Create(ro);
    FUZZ_CHECK(rt.ok()) << rt.status();
    runtime_ = *std::move(rt);
    if (grpc) {
      transport_ = std::make_unique<GrpcTransport>(runtime_.get());
    } else {
      transport_ = std::make_unique<RuntimeTransport>(runtime_.get());
    }
  }

  ~ServiceFuzzer() {
    transport_.reset();
    // Devices with a STRATEGY_NONE pool may count violations by design; the others may not.
    uint64_t expected_ok = 0;
    v1::ListDevicesResponse devices;
    runtime_->ListDevices(&devices);
    for (const v1::Device& d : devices.devices()) {
      if (none_devices_.count(d.id()) != 0) continue;
      FUZZ_CHECK(d.domain().violations().total() == 0)
          << "device " << d.id() << ": " << d.domain().violations().ShortDebugString();
      ++expected_ok;
    }
    ShutdownReport rep = runtime_->Shutdown();
    if (none_devices_.empty()) FUZZ_CHECK(rep.violations == 0) << rep.violations;
    (void)expected_ok;
  }

  void Run(FuzzInput* in) {
    for (size_t n = 0; n < kMaxCalls && !in->empty(); ++n) {
      const uint8_t sel = in->U8() % kSelectors;
      if (sel == kBuiltRecycle || sel == kBuiltReturn) {
        BuiltGiveBack(in, sel == kBuiltRecycle);
      } else if (sel == kBuiltFrags) {
        BuiltFragGiveBack(in);
      } else if (std::string_view(kMethods[sel]) == "Traffic") {
        std::vector<std::string> msgs;
        const unsigned count = 1 + in->U8() % 4;
        for (unsigned i = 0; i < count; ++i) msgs.emplace_back(in->Bytes(kMaxRequestBytes));
        Stream(kMethods[sel], msgs);
      } else {
        const std::string_view req = in->Bytes(kMaxRequestBytes);
        const google::protobuf::MethodDescriptor* m = FindMethod(kMethods[sel]);
        if (m->server_streaming()) {
          Stream(kMethods[sel], {std::string(req)});
        } else {
          Unary(kMethods[sel], req);
        }
      }
    }
  }

 private:
  grpc::Status Call(const char* method, std::string_view req, std::string* answer) {
    grpc::Status s = transport_->Unary(method, req, answer);
    CheckCode(method, s);
    if (s.ok()) {
      FUZZ_CHECK(Parses(FindMethod(method)->output_type(), *answer))
          << method << ": the answer does not parse";
    }
    return s;
  }

  void Unary(const char* method, std::string_view req) {
    std::string answer;
    const grpc::Status s = Call(method, req, &answer);
    const std::string_view name(method);
    if (name == "CreatePool") {
      // Parsed the same way the service parses it: strategy NONE marks the device (the call may
      // have failed; marking is only ever conservative).
      v1::CreatePoolRequest r;
      if (r.ParseFromArray(req.data(), static_cast<int>(req.size())) &&
          r.strategy() == v1::STRATEGY_NONE) {
        none_devices_.insert(r.device_id());
      }
    }
    if (!s.ok()) return;
    if (name == "Allocate") {
      v1::AllocateRequest r;
      FUZZ_CHECK(r.ParseFromArray(req.data(), static_cast<int>(req.size())));
      v1::AllocateResponse resp;
      FUZZ_CHECK(resp.ParseFromString(answer));
      FUZZ_CHECK(resp.pages_size() == static_cast<int>(r.count()))
          << "Allocate of " << r.count() << " gave " << resp.pages_size();
      for (const v1::Page& p : resp.pages()) {
        FUZZ_CHECK(p.has_frag() == (r.frag_size() != 0)) << "Allocate: a page of the wrong kind";
        if (p.has_frag()) {
          frags_.push_back({r.pool_id(), p.frag()});  // fragments share their page's frame
        } else {
          Hand(r.pool_id(), p.handle());
        }
      }
    } else if (name == "Recycle" || name == "Return") {
      // All-or-nothing: OK means every page and fragment named went back.
      v1::RecycleRequest rr;
      v1::ReturnRequest r;
      FUZZ_CHECK(r.ParseFromArray(req.data(), static_cast<int>(req.size())));
      if (name == "Recycle") {
        FUZZ_CHECK(rr.ParseFromArray(req.data(), static_cast<int>(req.size())));
      }
      for (const v1::PageHandle& h : r.pages()) GiveBack(r.pool_id(), h, method);
      for (const v1::FragHandle& f : name == "Recycle" ? rr.frags() : r.frags()) {
        ForgetFrag(r.pool_id(), f);
      }
    } else if (name == "RefFrag") {
      // Each reference added is one more give-back of the fragment.
      v1::RefFragRequest r;
      FUZZ_CHECK(r.ParseFromArray(req.data(), static_cast<int>(req.size())));
      for (const v1::FragHandle& f : r.frags()) frags_.push_back({r.pool_id(), f});
      refs_added_ = true;
    }
  }

  void Stream(const char* method, const std::vector<std::string>& msgs) {
    std::vector<std::string> answers;
    const grpc::Status s = transport_->Stream(method, msgs, &answers);
    CheckCode(method, s);
    const google::protobuf::Descriptor* type = FindMethod(method)->output_type();
    for (const std::string& a : answers) {
      FUZZ_CHECK(Parses(type, a)) << method << ": an answer does not parse";
    }
    if (std::string_view(method) != "Traffic") return;
    // Pages a Traffic stream handed out are the input's now; given-back pages are not followed
    // (a batch handles its pages one by one: tests/fuzz/traffic_fuzz.cc checks those counts).
    for (const std::string& a : answers) {
      v1::TrafficResponse resp;
      FUZZ_CHECK(resp.ParseFromString(a));
      for (const v1::Page& p : resp.allocated()) {
        if (!p.has_frag()) Hand(0, p.handle());
      }
    }
    traffic_used_ = true;
  }

  // A page handed to the input: its frame must not be in the input's hands already.
  void Hand(uint64_t pool_id, const v1::PageHandle& h) {
    auto [it, fresh] = held_.emplace(h.frame(), Held{pool_id, h.generation()});
    FUZZ_CHECK(fresh || traffic_used_) << "frame " << h.frame() << " handed out twice (pool "
                                       << pool_id << " and " << it->second.pool << ")";
    if (!fresh) it->second = Held{pool_id, h.generation()};
  }
  void GiveBack(uint64_t pool_id, const v1::PageHandle& h, const char* method) {
    auto it = held_.find(h.frame());
    FUZZ_CHECK(traffic_used_ || (it != held_.end() && it->second.generation == h.generation()))
        << method << " of frame " << h.frame() << " gen " << h.generation()
        << " succeeded, but it is not in flight";
    if (it != held_.end()) held_.erase(it);
  }

  void ForgetFrag(uint64_t pool_id, const v1::FragHandle& f) {
    for (auto it = frags_.begin(); it != frags_.end(); ++it) {
      if (it->pool == pool_id && it->frag.SerializeAsString() == f.SerializeAsString()) {
        frags_.erase(it);
        return;
      }
    }
  }

  // Recycle or Return of fragments handed out earlier, the oldest of one pool first. With flag 4
  // the first one is named twice (holding one reference): the whole call must be refused.
  void BuiltFragGiveBack(FuzzInput* in) {
    const unsigned want = 1 + in->U8() % 16;
    const uint8_t flags = in->U8();
    if (frags_.empty()) return;
    const uint64_t pool_id = frags_.front().pool;
    const bool recycle = (flags & 1) != 0;
    v1::RecycleRequest rr;
    v1::ReturnRequest r;
    std::vector<v1::FragHandle> named;
    for (const HeldFrag& h : frags_) {
      if (named.size() >= want) break;
      if (h.pool == pool_id) named.push_back(h.frag);
    }
    const bool twice = (flags & 4) != 0;
    if (twice) named.push_back(named.front());
    for (const v1::FragHandle& f : named) *(recycle ? rr.add_frags() : r.add_frags()) = f;
    rr.set_pool_id(pool_id);
    rr.set_napi_local((flags & 2) != 0);
    r.set_pool_id(pool_id);
    const char* method = recycle ? "Recycle" : "Return";
    std::string answer;
    const grpc::Status s =
        Call(method, recycle ? rr.SerializeAsString() : r.SerializeAsString(), &answer);
    if (twice) {
      // (Unless RefFrag gave it a second reference.)
      FUZZ_CHECK(!s.ok() || refs_added_) << method << " naming a fragment twice succeeded";
      if (!s.ok()) return;
      named.pop_back();
      ForgetFrag(pool_id, named.front());
    }
    if (!s.ok()) {
      FUZZ_CHECK(s.error_code() == grpc::FAILED_PRECONDITION || s.error_code() == grpc::NOT_FOUND)
          << method << ": " << s.error_code() << " " << s.error_message();
      return;
    }
    for (const v1::FragHandle& f : named) ForgetFrag(pool_id, f);
  }

  // Recycle or Return of pages handed out earlier, built from the handles held.
  void BuiltGiveBack(FuzzInput* in, bool recycle) {
    const unsigned want = 1 + in->U8() % 16;
    const uint8_t flags = in->U8();
    v1::ReturnRequest r;
    uint64_t pool_id = 0;
    for (auto it = held_.begin(); it != held_.end() && r.pages_size() < static_cast<int>(want);
         ++it) {
      if (it->second.pool == 0) continue;
      if (pool_id == 0) pool_id = it->second.pool;
      if (it->second.pool != pool_id) continue;
      v1::PageHandle* h = r.add_pages();
      h->set_frame(it->first);
      h->set_generation(it->second.generation);
    }
    if (pool_id == 0) return;
    if (flags & 1) {  // a stale generation on the last page: the whole call must be refused
      auto* h = r.mutable_pages(r.pages_size() - 1);
      h->set_generation(h->generation() + 2);
    }
    r.set_pool_id(pool_id);
    std::string bytes;
    if (recycle) {
      v1::RecycleRequest rr;
      rr.set_pool_id(pool_id);
      *rr.mutable_pages() = r.pages();
      rr.set_napi_local((flags & 2) != 0);
      bytes = rr.SerializeAsString();
    } else {
      bytes = r.SerializeAsString();
    }
    std::string answer;
    const char* method = recycle ? "Recycle" : "Return";
    const grpc::Status s = Call(method, bytes, &answer);
    if (flags & 1) {
      FUZZ_CHECK(!s.ok()) << method << " with a stale generation succeeded";
      return;
    }
    if (!s.ok()) {
      // Only a destroyed pool (or an unbound device) refuses valid handles... and then it says so.
      FUZZ_CHECK(s.error_code() == grpc::FAILED_PRECONDITION || s.error_code() == grpc::NOT_FOUND)
          << method << ": " << s.error_code() << " " << s.error_message();
      return;
    }
    for (const v1::PageHandle& h : r.pages()) GiveBack(pool_id, h, method);
  }

  struct Held {
    uint64_t pool;  // 0: handed out by a Traffic stream (pool unknown here)
    uint32_t generation;
  };
  struct HeldFrag {
    uint64_t pool;
    v1::FragHandle frag;
  };

  std::unique_ptr<Runtime> runtime_;
  std::unique_ptr<Transport> transport_;  // destroyed first (a server holds the runtime)
  std::map<uint64_t, Held> held_;         // frame -> pool and generation
  std::vector<HeldFrag> frags_;           // fragments handed out by Allocate, oldest first
  bool refs_added_ = false;               // a RefFrag succeeded: a fragment may be held twice
  std::set<uint64_t> none_devices_;
  bool traffic_used_ = false;
};

}  // namespace
}  // namespace pagepool::server

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  pagepool::fuzz::FuzzInput in(data, size);
  static const bool grpc = [] {
    const char* v = std::getenv("PAGEPOOL_FUZZ_SERVICE_GRPC");
    return v != nullptr && v[0] == '1';
  }();
  pagepool::server::ServiceFuzzer fuzzer(grpc);
  fuzzer.Run(&in);
  return 0;
}

namespace pagepool::fuzz {

std::vector<std::string> FuzzSeeds() {
  namespace v1 = ::pagepool::v1;
  using pagepool::server::kBuiltFrags;
  using pagepool::server::kBuiltRecycle;
  using pagepool::server::kBuiltReturn;
  auto sel = [](std::string_view name) {
    for (size_t i = 0; i < pagepool::server::kRawMethods; ++i) {
      if (name == pagepool::server::kMethods[i]) return static_cast<uint8_t>(i);
    }
    std::abort();
  };
  auto call = [&](SeedWriter* w, std::string_view name, const google::protobuf::Message& m) {
    w->U8(sel(name)).Bytes(m.SerializeAsString(), server::kMaxRequestBytes);
  };
  std::vector<std::string> seeds;
  const v1::IommuMode modes[] = {v1::IOMMU_MODE_STRICT, v1::IOMMU_MODE_LAZY,
                                 v1::IOMMU_MODE_PASSTHROUGH};
  const v1::Strategy strategies[] = {v1::STRATEGY_XARRAY, v1::STRATEGY_SCAN, v1::STRATEGY_NONE};
  for (int i = 0; i < 9; ++i) {
    SeedWriter w;
    v1::CreateDeviceRequest cd;
    cd.set_name("eth0");
    cd.set_iommu_mode(modes[i % 3]);
    cd.set_address_width(i < 3 ? 48 : (i < 6 ? 39 : 57));
    call(&w, "CreateDevice", cd);
    v1::CreatePoolRequest cp;
    cp.set_device_id(1);
    cp.set_napi_id(3);
    cp.set_strategy(strategies[i / 3]);
    cp.set_order(static_cast<uint32_t>(i % 2));
    if (i == 4) cp.set_dma_index_limit(8);
    call(&w, "CreatePool", cp);
    v1::AllocateRequest al;
    al.set_pool_id(1);
    al.set_count(static_cast<uint32_t>(4 + i));
    call(&w, "Allocate", al);
    v1::GetPoolRequest gp;
    gp.set_pool_id(1);
    call(&w, "GetPool", gp);
    v1::ListInflightRequest li;
    li.set_pool_id(1);
    call(&w, "ListInflight", li);
    w.U8(kBuiltRecycle).U8(2).U8(i % 2 == 0 ? 2 : 0);
    w.U8(kBuiltReturn).U8(1).U8(1);
    w.U8(kBuiltReturn).U8(1).U8(0);
    v1::TrafficRequest tr;
    tr.set_pool_id(1);
    tr.set_allocate(3);
    w.U8(sel("Traffic")).U8(1);
    w.Bytes(tr.SerializeAsString(), server::kMaxRequestBytes);
    w.Bytes(tr.SerializeAsString(), server::kMaxRequestBytes);
    v1::GetDomainRequest gd;
    gd.set_device_id(1);
    call(&w, "GetDomain", gd);
    v1::DumpPageTableRequest dp;
    dp.set_device_id(1);
    call(&w, "DumpPageTable", dp);
    call(&w, "ListDevices", v1::ListDevicesRequest());
    v1::ListPoolsRequest lp;
    call(&w, "ListPools", lp);
    if (i % 2 == 0) {
      v1::DestroyPoolRequest dpl;
      dpl.set_pool_id(1);
      call(&w, "DestroyPool", dpl);
      w.U8(kBuiltReturn).U8(4).U8(0);
    }
    v1::UnbindDeviceRequest ub;
    ub.set_device_id(1);
    call(&w, "UnbindDevice", ub);
    v1::GetDeviceRequest gdv;
    gdv.set_device_id(1);
    call(&w, "GetDevice", gdv);
    seeds.push_back(w.str());
  }
  // Fragments (Allocate and Traffic with frag_size), given back one by one, twice (refused), after
  // a destroy and an unbind; a frag_size above the page size.
  for (int i = 0; i < 2; ++i) {
    SeedWriter w;
    v1::CreateDeviceRequest cd;
    cd.set_iommu_mode(modes[i]);
    call(&w, "CreateDevice", cd);
    v1::CreatePoolRequest cp;
    cp.set_device_id(1);
    cp.set_strategy(strategies[i]);
    call(&w, "CreatePool", cp);
    v1::AllocateRequest al;
    al.set_pool_id(1);
    al.set_count(6);
    al.set_frag_size(1000);
    call(&w, "Allocate", al);
    al.set_frag_size(5000);
    call(&w, "Allocate", al);
    v1::ListInflightRequest li;
    li.set_pool_id(1);
    call(&w, "ListInflight", li);
    w.U8(kBuiltFrags).U8(2).U8(4);  // named twice: refused
    w.U8(kBuiltFrags).U8(1).U8(3);  // recycled, napi_local
    w.U8(kBuiltFrags).U8(0).U8(0);  // returned
    v1::TrafficRequest tr;
    tr.set_pool_id(1);
    tr.set_allocate(5);
    tr.set_frag_size(700);
    w.U8(sel("Traffic")).U8(0);
    w.Bytes(tr.SerializeAsString(), server::kMaxRequestBytes);
    v1::GetPoolRequest gp;
    gp.set_pool_id(1);
    call(&w, "GetPool", gp);
    v1::DestroyPoolRequest dpl;
    dpl.set_pool_id(1);
    call(&w, "DestroyPool", dpl);
    w.U8(kBuiltFrags).U8(0).U8(0);
    v1::UnbindDeviceRequest ub;
    ub.set_device_id(1);
    call(&w, "UnbindDevice", ub);
    w.U8(kBuiltFrags).U8(15).U8(1);
    v1::GetDomainRequest gd;
    gd.set_device_id(1);
    call(&w, "GetDomain", gd);
    seeds.push_back(w.str());
  }
  // Bytes that are not protobuf, for every method.
  SeedWriter bad;
  for (size_t i = 0; i < pagepool::server::kRawMethods; ++i) {
    bad.U8(static_cast<uint8_t>(i));
    if (std::string_view(pagepool::server::kMethods[i]) == "Traffic") bad.U8(0);
    bad.Bytes("\xff\xff\xff", server::kMaxRequestBytes);
  }
  seeds.push_back(bad.str());
  return seeds;
}

}  // namespace pagepool::fuzz
